"""Cost metrics: MACs, latency, peak memory, model size, U-Net evaluations."""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # FlopCounterMode has formulas for the CUDA attention kernels only; the CPU kernel does the same math
    b, h, q_len, e = query_shape
    s_len, ev = key_shape[-2], value_shape[-1]
    return 2 * b * h * q_len * s_len * e + 2 * b * h * q_len * s_len * ev


def _onednn_qconv_flops(x_shape, x_scale, x_zero, w_shape, *args, out_shape=None, **kwargs) -> int:
    # real int8 kernels: the prepacked weight keeps its logical (out, in / groups, kh, kw) shape
    return 2 * math.prod(out_shape) * math.prod(w_shape[1:])


def _onednn_qlinear_flops(x_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * math.prod(out_shape) * x_shape[-1]


def mac_counter() -> FlopCounterMode:
    """torch's FlopCounterMode, also counting CPU scaled-dot-product attention and oneDNN int8 conv / linear."""
    mapping = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        mapping[cpu_sdpa] = _sdpa_cpu_flops
    for name, formula in (("qconv2d_pointwise", _onednn_qconv_flops), ("qlinear_pointwise", _onednn_qlinear_flops)):
        op = getattr(torch.ops.onednn, name, None)  # real int8 kernels (backend.methods.quant.kernels)
        if op is not None:
            mapping[op] = formula
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_macs(fn: Callable[[], Any]) -> int:
    """Multiply-accumulates executed by fn() (1 MAC = 2 FLOPs; convolutions, matmuls, attention)."""
    with mac_counter() as counter:
        fn()
    return counter.get_total_flops() // 2


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_latency(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1, device: str = "cpu") -> dict:
    """Median and p90 wall-clock seconds of fn() after warm-up, device-synchronised."""
    return interleaved_latency({"fn": fn}, repeats, warmup, device)["fn"]


def interleaved_latency(fns: dict[str, Callable[[], Any]], repeats: int = 3, warmup: int = 1,
                        device: str = "cpu") -> dict[str, dict]:
    """measure_latency for several functions, run round by round (a, b, c, a, b, c, ...) so that background
    load on a shared machine hits all of them alike; {name: {"latency_s", "latency_p90_s"}}."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    out = {}
    for name, t in times.items():
        t.sort()
        out[name] = {"latency_s": statistics.median(t), "latency_p90_s": t[min(len(t) - 1, round(0.9 * (len(t) - 1)))]}
    return out


def rss_mb() -> float:
    """Resident memory of this process, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def peak_memory_mb(fn: Callable[[], Any], device: str = "cpu") -> float:
    """Peak memory while fn() runs: CUDA peak allocated on GPU, process RSS (sampled every 2 ms) on CPU."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    peak, done = [rss_mb()], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.002)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        fn()
    finally:
        done.set()
        watcher.join()
    return max(peak[0], rss_mb())


def model_size_mb(module: torch.nn.Module) -> float:
    """Bytes of parameters and buffers, in MiB (a method may report its packed size instead)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


class UnetCallCounter:
    """Counts U-Net evaluations per image: rows passed through the U-Net / images generated.

    With classifier-free guidance batched in one call, one denoising step is two evaluations.
    """

    def __init__(self, unet: torch.nn.Module):
        self.unet, self.rows, self.calls = unet, 0, 0
        self._handle = None

    def __enter__(self) -> UnetCallCounter:
        def hook(module, args, kwargs):
            sample = args[0] if args else kwargs["sample"]
            self.rows += sample.shape[0]
            self.calls += 1

        self._handle = self.unet.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def per_image(self, n_images: int) -> float:
        return self.rows / max(1, n_images)
