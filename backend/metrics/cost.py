"""Cost metrics: MACs, latency, peak memory, model size, U-Net evaluations."""

from __future__ import annotations

import ctypes
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from backend.metrics.paired import median_interval


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


class EvalMacs:
    """MACs of each evaluation of a module (the denoiser) while inside the ``with``: ``per_eval`` lists them in
    order, counted on the real computation (a caching step counts what it runs)."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.per_eval = module, []
        self._counter, self._handles = None, []

    def __enter__(self) -> EvalMacs:
        def pre(module, args):
            if self._counter is None:
                self._counter = mac_counter()
                self._counter.__enter__()

        def post(module, args, output):
            if self._counter is not None:
                self._counter.__exit__(None, None, None)
                self.per_eval.append(self._counter.get_total_flops() // 2)
                self._counter = None

        self._handles = [self.module.register_forward_pre_hook(pre), self.module.register_forward_hook(post)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self._counter = None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


NOISY_HALF_WIDTH = 0.15  # an interval wider than ±15% of its median is flagged "timing noisy on this machine"


def _p90(sorted_times: list[float]) -> float:
    return sorted_times[min(len(sorted_times) - 1, round(0.9 * (len(sorted_times) - 1)))]


def noisy(median: float, ci: list[float] | None) -> bool:
    """Whether a timing (or ratio) interval's half-width is over NOISY_HALF_WIDTH of its median."""
    return ci is not None and (ci[1] - ci[0]) / 2 > NOISY_HALF_WIDTH * median


def timed_rounds(fns: dict[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1, device: str = "cpu",
                 baseline: str | None = None, clock: Callable[[], float] = time.perf_counter,
                 keep_times: bool = False) -> dict[str, dict]:
    """The timing protocol: warm-up, then the functions in interleaved rounds (a, b, c, a, b, c, ...), so that
    background load on a shared machine hits all of them alike.

    Per name: ``latency_s`` (median), ``latency_ci`` (95% interval, None for one repeat), ``latency_p90_s``,
    ``repeats``, ``timing_noisy`` (the interval's half-width over 15% of the median: of the speedup when there
    is a baseline, else of the latency); with ``baseline``, also ``speedup`` (median of the per-round ratios
    baseline time / this time — end to end when fns are whole generations) and ``speedup_ci``; with
    ``keep_times``, the measured ``times_s``.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats {repeats!r} is out of range; allowed: a whole number ≥ 1")
    if baseline is not None and baseline not in fns:
        raise ValueError(f"baseline {baseline!r} is not one of the timed functions: {', '.join(fns)}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = clock()
            fn()
            _sync(device)
            times[name].append(max(clock() - start, 1e-9))
    out = {}
    for name, t in times.items():
        median, ci = median_interval(t)
        row = {"latency_s": median, "latency_ci": ci, "latency_p90_s": _p90(sorted(t)), "repeats": repeats,
               "timing_noisy": noisy(median, ci)}
        if baseline is not None:
            ratio, ratio_ci = median_interval([b / v for b, v in zip(times[baseline], t)])
            # paired per round, the ratio cancels load shared by both: its interval decides "noisy"
            row.update(speedup=ratio, speedup_ci=ratio_ci, timing_noisy=noisy(ratio, ratio_ci))
        if keep_times:
            row["times_s"] = t
        out[name] = row
    return out


def describe_timing(row: dict) -> str:
    """One line for a timed row: "0.41 s [0.39, 0.44] · 2.31× [2.05, 2.60]" (+ a noise warning)."""
    def fmt(value: float, ci: list[float] | None, unit: str) -> str:
        text = f"{value:.2f}{unit}"
        return text + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

    parts = [fmt(row["latency_s"], row.get("latency_ci"), " s")]
    if row.get("speedup") is not None:
        parts.append(fmt(row["speedup"], row.get("speedup_ci"), "×"))
    text = " · ".join(parts)
    return text + (" (timing noisy on this machine)" if row.get("timing_noisy") else "")


def rss_mb() -> float:
    """Resident memory of this process, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def release_freed_memory() -> None:
    """Give memory that the allocator keeps after earlier work back to the OS (glibc), so that RSS growth
    measures this call's own peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(fn: Callable[[], Any], device: str = "cpu") -> float:
    """Peak memory growth while fn() runs, in MiB, above what was in use just before (weights already loaded
    are not counted: they are ``model_size_mb``). CUDA: max_memory_allocated after a reset, minus the
    allocation before. CPU: peak process RSS (sampled every 2 ms) minus the RSS before, after returning freed
    memory to the OS."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    release_freed_memory()
    before = rss_mb()
    peak, done = [before], threading.Event()

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
    return max(0.0, max(peak[0], rss_mb()) - before)


def model_size_mb(module: torch.nn.Module) -> float:
    """Bytes of parameters and buffers, in MiB (a method may report its packed size instead)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


class UnetCallCounter:
    """Counts denoiser (U-Net or transformer) evaluations per image: rows passed through it / images generated.

    With classifier-free guidance batched in one call, one denoising step is two evaluations.
    """

    def __init__(self, unet: torch.nn.Module):
        self.unet, self.rows, self.calls = unet, 0, 0
        self._handle = None

    def __enter__(self) -> UnetCallCounter:
        def hook(module, args, kwargs):
            sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
            self.rows += sample.shape[0]
            self.calls += 1

        self._handle = self.unet.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def per_image(self, n_images: int) -> float:
        return self.rows / max(1, n_images)
