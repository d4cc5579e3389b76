"""Which x86 instruction set oneDNN's int8 kernels use here, and whether their sums saturate.

oneDNN multiplies uint8 activations by int8 weights. With VNNI (AVX-512 VNNI, AVX-VNNI) or AMX the
products accumulate in int32: exact. Without it (AVX2, AVX-512 without VNNI) the kernels use
``vpmaddubsw``, which adds *pairs* of u8×s8 products in int16 with saturation, so full-range operands
(255·127 + 255·127 = 64770 > 32767) give wrong sums; this is why PyTorch's x86 quantization uses
``reduce_range``. A pair cannot saturate when ``2 · act_qmax · max|weight code| ≤ 32767``: 7-bit
activations (0…127) or weight codes in −64…64.

:func:`cpu_isa` reads the CPU flags and the ``ONEDNN_MAX_CPU_ISA`` cap (read by oneDNN at its first
use, so it must be set before the process starts); :func:`int8_support` runs a self-test on
full-range random operands, which decides, whatever the flags say.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass

import torch

INT16_MAX = 32767

_VNNI512 = {"avx2", "avx512", "avx512_vnni"}
_AMX = _VNNI512 | {"amx"}
_CAPS: dict[str, set[str]] = {  # ONEDNN_MAX_CPU_ISA value -> the features oneDNN may use
    "SSE41": set(), "AVX": set(), "AVX2": {"avx2"}, "AVX2_VNNI": {"avx2", "avx_vnni"},
    "AVX2_VNNI_2": {"avx2", "avx_vnni"}, "AVX512_CORE": {"avx2", "avx512"}, "AVX512_CORE_VNNI": _VNNI512,
    "AVX512_CORE_BF16": _VNNI512, "AVX512_CORE_FP16": _VNNI512, "AVX10_1_512": _VNNI512, "AVX10_2_512": _VNNI512,
    "AVX512_CORE_AMX": _AMX, "AVX10_1_512_AMX": _AMX, "AVX512_CORE_AMX_FP16": _AMX, "AVX10_1_512_AMX_FP16": _AMX,
    "AVX10_2_512_AMX_2": _AMX,
}


@dataclass(frozen=True)
class CpuIsa:
    """The int8 instruction set: ``name`` (amx, avx512_vnni, avx2_vnni, avx512, avx2, sse41 or the machine),
    ``vnni`` (int32 accumulation: VNNI or AMX), ``cap`` (the ONEDNN_MAX_CPU_ISA value when it lowers the ISA)."""

    name: str
    vnni: bool
    cap: str = ""


def _cpu_features(flags: set[str]) -> set[str]:
    out = {"avx2"} & flags
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        out.add("avx512")
        if "avx512_vnni" in flags:
            out.add("avx512_vnni")
            if {"amx_int8", "amx_tile"} <= flags:
                out.add("amx")
    if "avx_vnni" in flags and "avx2" in flags:
        out.add("avx_vnni")
    return out


def _cpuinfo_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo") as f:
            line = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        return None
    return set(line.partition(":")[2].split()) if line else None


def cpu_isa(flags: set[str] | None = None, cap: str | None = None) -> CpuIsa:
    """The ISA oneDNN's int8 kernels run with: the CPU's flags (default /proc/cpuinfo), lowered by ``cap``
    (default the ONEDNN_MAX_CPU_ISA or DNNL_MAX_CPU_ISA environment variable)."""
    flags = _cpuinfo_flags() if flags is None else flags
    if flags is None:  # not Linux: no flags to read; the self-test still decides
        return CpuIsa(platform.machine().lower() or "unknown", vnni=False)
    if cap is None:
        cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    have = _cpu_features(flags)
    allowed = _CAPS.get(cap.strip().upper())
    name = _best(have if allowed is None else have & allowed, flags)
    return CpuIsa(name, vnni=name in ("amx", "avx512_vnni", "avx2_vnni"),
                  cap=cap.strip().upper() if name != _best(have, flags) else "")


def _best(features: set[str], flags: set[str]) -> str:
    for name, need in (("amx", "amx"), ("avx512_vnni", "avx512_vnni"), ("avx2_vnni", "avx_vnni"),
                       ("avx512", "avx512"), ("avx2", "avx2")):
        if need in features:
            return name
    return "sse41" if "sse4_1" in flags else platform.machine().lower() or "unknown"


@dataclass(frozen=True)
class Int8Support:
    """What the self-test found: ``reason`` why int8 kernels cannot run ("" when they can); ``saturates``
    when full-range u8×s8 sums are wrong but 7-bit activations and weight codes in −64…64 are exact."""

    isa: CpuIsa
    saturates: bool = False
    reason: str = ""


def _exact(weights: torch.Tensor, acts: torch.Tensor, zero: int) -> bool:
    """Whether oneDNN's int8 conv (1×1) and matmul reproduce the exact integer result of ``acts`` × ``weights``."""
    n_out = weights.shape[0]
    scales, zeros = torch.ones(n_out), torch.zeros(n_out, dtype=torch.int64)
    ref = (acts.double() - zero) @ weights.double().T
    packed = torch.ops.onednn.qlinear_prepack(weights, None)
    lin = torch.ops.onednn.qlinear_pointwise(acts, 1.0, zero, packed, scales, zeros, None, 1.0, 0, torch.float32,
                                             "none", [], "")
    w4, x4 = weights[:, :, None, None], acts.T.reshape(1, -1, acts.shape[0], 1).contiguous()
    packed = torch.ops.onednn.qconv_prepack(w4, scales, 1.0, 0, [1, 1], [0, 0], [1, 1], 1, None)
    conv = torch.ops.onednn.qconv2d_pointwise(x4, 1.0, zero, packed, scales, zeros, None, [1, 1], [0, 0], [1, 1], 1,
                                              1.0, 0, torch.float32, "none", [], "")
    return torch.equal(lin.double(), ref) and torch.equal(conv.reshape(n_out, -1).T.double(), ref)


def _operands() -> tuple[torch.Tensor, torch.Tensor]:
    """Full-range random int8 weights and uint8 activations, with rows and columns at the extremes."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randint(-128, 128, (32, 64), generator=gen, dtype=torch.int8)
    x = torch.randint(0, 256, (16, 64), generator=gen, dtype=torch.uint8)
    w[0], w[1], x[0] = 127, -128, 255
    return w, x


@functools.cache
def int8_support() -> Int8Support:
    """Self-test of this torch build and CPU's oneDNN int8 kernels (cached): exact, saturating, or unusable."""
    isa = cpu_isa()
    if not torch.backends.mkldnn.is_available():
        return Int8Support(isa, reason="this torch build has no oneDNN (mkldnn)")
    try:
        w, x = _operands()
        if _exact(w, x, 100):
            return Int8Support(isa)
        w64 = torch.round(w.float() / 2).to(torch.int8)  # −64…64
        if _exact(w, x // 2, 50) and _exact(w64, x, 100):
            return Int8Support(isa, saturates=True)
        return Int8Support(isa, reason=f"oneDNN int8 kernels gave wrong results on this CPU ({isa.name}), also "
                                       "with 7-bit operands")
    except (RuntimeError, AttributeError, NotImplementedError) as exc:
        return Int8Support(isa, reason=f"oneDNN int8 kernels are not available ({str(exc).splitlines()[0][:120]})")
