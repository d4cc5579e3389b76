"""Real integer kernels for a quantized U-Net: each fake-quantized layer becomes an int8 oneDNN layer.

:func:`realize` swaps every :class:`~backend.methods.quant.layers.QuantLayer` of a quantized U-Net (PTQ
or a loaded EfficientDM / QAT checkpoint) for an :class:`Int8Layer`: its integer weight codes are
prepacked once for oneDNN's int8 convolution / matmul (``torch.ops.onednn.qconv2d_pointwise`` /
``qlinear_pointwise``, the kernels torch's x86 inductor quantization uses), and each call quantizes the
input with the layer's *current* per-denoising-step (TALSQ) activation scale and zero point, runs
uint8 × int8 → int32 on the CPU's integer units and writes fp32 out, as the simulated layer does. The
fp32 weights are released, so the resident U-Net weights are one byte per quantized weight.

Exactness: activations are asymmetric uint8 codes (any act bits ≤ 8 fit exactly); weights must be
symmetric int8 for oneDNN, so the simulated asymmetric code ``q − z`` is used as is where it fits in
[−128, 127] (always for ≤ 7 bits; for 8 bits, channels whose range is near-symmetric) and the rest of
the 8-bit channels are re-quantized symmetrically (counted in the report). Codes below 8 bits run on
the same int8 kernels: exact, but no faster than W8A8 (no 4-bit integer kernels on CPU).

Saturation (:mod:`backend.methods.quant.isa`): without VNNI/AMX (AVX2, AVX-512 without VNNI) oneDNN adds
pairs of u8×s8 products in int16 with saturation. There, a layer whose full-range sums could saturate
(8-bit activations × weight codes beyond ±64) quantizes its input to 7-bit codes of the same range (step
×2, ``reduce_range``, as PyTorch's x86 quantization does): exact on the kernels, but one activation bit
coarser than the simulated model. The report names the ISA and the layers.

What stays simulated, and why, is listed in :class:`KernelReport`: the attention matmuls (QKᵀ and
softmax·V have no static-scale integer bmm kernel), and everything on devices other than the CPU.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from backend.metadata import unet_info
from backend.methods.quant.isa import INT16_MAX, int8_support
from backend.methods.quant.layers import ActQuantizer, QuantLayer, quant_layer_class
from backend.methods.quant.model import _set_module, fingerprint, get_state

logger = logging.getLogger(__name__)

KERNELS = ("simulated", "real")


@dataclass
class KernelReport:
    """Which layers run on integer kernels, which fall back to simulation, and why."""

    kernels: str  # what ran: "real" or "simulated"
    reason: str = ""  # why simulated, when real was asked for
    int8_layers: list[str] = field(default_factory=list)
    simulated: dict[str, str] = field(default_factory=dict)  # layer -> why
    requantized_channels: int = 0  # 8-bit asymmetric weight channels re-quantized to symmetric int8
    isa: str = ""  # the CPU instruction set the int8 kernels run with (isa.cpu_isa)
    reduce_range: list[str] = field(default_factory=list)  # int8 layers whose input runs as 7-bit codes
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs and the UI."""
        if self.kernels != "real":
            return f"simulated kernels ({self.reason})" if self.reason else "simulated kernels (fake quantization)"
        tag = ", reduce_range" if self.reduce_range else ""
        text = f"real int8 kernels (oneDNN, {self.isa}{tag}) on {len(self.int8_layers)} layers"
        if self.simulated:
            text += f", {len(self.simulated)} simulated"
        if self.requantized_channels:
            text += f", {self.requantized_channels} weight channels re-quantized to symmetric int8"
        return text


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first real (non-meta) tensor."""
    tensors = (t for t in [*module.parameters(), *module.buffers()] if not t.is_meta)
    return next(tensors, torch.empty(0)).device


def unavailable_reason(device: torch.device | str) -> str:
    """Why real integer kernels cannot run on ``device`` ("" when they can)."""
    if torch.device(device).type != "cpu":
        return (f"real integer kernels are implemented for the CPU (oneDNN int8); on {torch.device(device).type} "
                "this build runs simulated fake quantization")
    return int8_support().reason


def symmetric_int8(codes: torch.Tensor, zero: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                          int]:
    """(int8 weights, per-channel scales, channels re-quantized) for asymmetric codes ``scale·(codes − zero)``."""
    shape = (-1,) + (1,) * (codes.dim() - 1)
    d = codes.float() - zero.float().view(shape)
    flat = d.reshape(d.shape[0], -1)
    fits = (flat.amin(1) >= -128) & (flat.amax(1) <= 127)
    scale = scale.detach().float().clone()
    if not bool(fits.all()):
        bad = ~fits
        w = flat[bad] * scale[bad, None]
        new_scale = (w.abs().amax(1) / 127).clamp(min=1e-12)
        flat = flat.clone()
        flat[bad] = torch.clamp(torch.round(w / new_scale[:, None]), -128, 127)
        scale[bad] = new_scale
    return flat.view_as(d).to(torch.int8), scale, int((~fits).sum())


class Int8Layer(nn.Module):
    """A quantized Conv2d or Linear on oneDNN int8 kernels, with the simulated layer's scales.

    The input is quantized with the activation quantizer's step size and zero point of the current
    denoising step (the shared TALSQ index), so the integer codes are those of the simulated layer;
    where sums could overflow int16 on a CPU whose int8 kernels saturate (``saturates``, default: the
    self-test's finding), 7-bit codes of that range.
    """

    def __init__(self, layer: QuantLayer, saturates: bool | None = None):
        super().__init__()
        base = layer.base_layer
        self.is_conv = layer.is_conv
        self.a_quant: ActQuantizer = layer.a_quant
        self.w_bits, self.role = layer.w_quant.bits, layer.role
        self.out_features, self.in_features = base.weight.shape[0], base.weight.shape[1]  # diffusers reads them
        with torch.no_grad():
            codes = layer.int_weight().round()
            qweight, w_scale, self.requantized = symmetric_int8(codes, layer.w_quant.zero_point, layer.w_quant.scale)
        saturates = int8_support().saturates if saturates is None else saturates
        self.reduce_range = saturates and 2 * self.a_quant.qmax * int(qweight.abs().max()) > INT16_MAX
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("w_zero", torch.zeros(self.out_features, dtype=torch.int64))
        self.register_buffer("bias", None if base.bias is None else base.bias.detach().float().clone())
        self.weight_bytes = qweight.numel()  # one byte per weight once prepacked
        if self.is_conv:
            self.stride, self.padding = list(base.stride), list(base.padding)
            self.dilation, self.groups = list(base.dilation), base.groups
            self.packed = torch.ops.onednn.qconv_prepack(qweight, w_scale, 1.0, 0, self.stride, self.padding,
                                                         self.dilation, self.groups, None)
        else:
            self.packed = torch.ops.onednn.qlinear_prepack(qweight, None)

    def _codes(self, x: torch.Tensor) -> tuple[torch.Tensor, float, int]:
        s, z = self.a_quant.step_params()
        s, zero, qmax = s.detach(), int(torch.round(z)), self.a_quant.qmax
        if self.reduce_range:  # 7-bit codes of the same range: step ×2
            qmax = (qmax + 1) // 2 - 1
            s, zero = 2 * s, min((zero + 1) // 2, qmax)
        scale = float(s)
        q = torch.clamp(torch.round(x / s) + zero, 0, qmax).to(torch.uint8)
        return q, scale, zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, scale, zero = self._codes(x.float())
        if self.is_conv:
            return torch.ops.onednn.qconv2d_pointwise(
                q.contiguous(), scale, zero, self.packed, self.w_scale, self.w_zero, self.bias, self.stride,
                self.padding, self.dilation, self.groups, 1.0, 0, torch.float32, "none", [], "")
        lead = q.shape[:-1]
        y = torch.ops.onednn.qlinear_pointwise(
            q.reshape(-1, q.shape[-1]).contiguous(), scale, zero, self.packed, self.w_scale, self.w_zero, self.bias,
            1.0, 0, torch.float32, "none", [], "")
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        kind = "conv" if self.is_conv else "linear"
        act = "A7 (reduce_range)" if self.reduce_range else f"A{self.a_quant.bits}"
        return f"{self.role}, int8 {kind} (W{self.w_bits} codes) {act}, oneDNN"


def _conv_unsupported(base: nn.Conv2d) -> str:
    if base.padding_mode != "zeros":
        return f"padding_mode {base.padding_mode!r} (the int8 kernel pads with zeros)"
    if isinstance(base.padding, str):
        return f"padding {base.padding!r} (the int8 kernel takes explicit padding)"
    return ""


def lean_copy(unet: nn.Module, layer_names: list[str]) -> nn.Module:
    """A copy of ``unet`` whose named Conv2d/Linear weights are not copied but left on the meta device.

    For loading a packed checkpoint onto real kernels without materializing a second fp32 U-Net: the
    checkpoint provides those weights as integer codes. Layers the int8 kernels cannot run are copied.
    """
    memo: dict[int, object] = {}
    for name in layer_names:
        try:
            module = unet.get_submodule(name)
        except AttributeError:  # another model's checkpoint: loading it names the mismatch
            continue
        if quant_layer_class(module) is not None and not (isinstance(module, nn.Conv2d) and _conv_unsupported(module)):
            memo[id(module.weight)] = nn.Parameter(module.weight.detach().to("meta"), requires_grad=False)
    copy_ = copy.deepcopy(unet, memo)
    unet_info(copy_).fingerprint = fingerprint(unet)
    return copy_


def realize(unet: nn.Module, kernels: str = "real", reduce_range: bool | None = None) -> KernelReport:
    """Put the quantized U-Net on real int8 kernels in place (``kernels="real"``), or report why not.

    Where the device has no integer kernels the U-Net stays simulated and the report says so
    (``report.kernels == "simulated"`` with a ``reason``, also logged as a warning): a documented fallback, never
    a silent one. The real-kernel summary and notes are logged too (info; reduce_range: a warning).
    ``reduce_range`` (default: when the CPU's int8 sums saturate) runs 8-bit activations of layers whose
    full-range sums could saturate as 7-bit codes.
    """
    if kernels not in KERNELS:
        raise ValueError(f"quant.kernels: {kernels!r} is not allowed; allowed: {', '.join(KERNELS)}")
    state = get_state(unet)
    if state is None:
        raise ValueError("this U-Net is not quantized; quantize it (PTQ or a checkpoint) before choosing kernels")
    if kernels == "simulated":
        return KernelReport("simulated")
    reason = unavailable_reason(module_device(unet))
    if reason:
        report = KernelReport("simulated", reason=f"real kernels asked for, but {reason}")
        logger.warning("note: %s", report.summary())
        return report
    support = int8_support()
    report = KernelReport("real", isa=support.isa.name)
    saturates = support.saturates if reduce_range is None else reduce_range
    for name, layer in state.layers.items():
        why = _conv_unsupported(layer.base_layer) if layer.is_conv else ""
        if why:
            report.simulated[name] = why
            continue
        real = Int8Layer(layer, saturates)
        _set_module(unet, name, real)
        report.int8_layers.append(name)
        if real.reduce_range:
            report.reduce_range.append(name)
        report.requantized_channels += real.requantized
        layer.base_layer.weight = nn.Parameter(layer.base_layer.weight.detach().to("meta"), requires_grad=False)
        layer.set_codes(None)
    for name in state.attn:
        report.simulated[f"{name} (matmuls)"] = "QKᵀ and softmax·V: no static-scale integer bmm kernel"
    logger.info("%s", report.summary())
    low = sorted({f"W{m.w_bits}A{m.a_quant.bits}" for m in _int8_layers(unet) if m.w_bits < 8 or m.a_quant.bits < 8})
    if low:
        report.notes.append(f"{', '.join(low)} codes run on int8 kernels: exact, but no faster than W8A8 (this CPU "
                            "has no 4-bit integer kernels)")
        logger.info("note: %s", report.notes[-1])
    if report.reduce_range:
        why = (f"because {support.isa.name} int8 kernels add u8×s8 pairs in int16 with saturation (no VNNI)"
               if support.saturates else "as asked")
        report.notes.append(
            f"reduce_range: {len(report.reduce_range)} layers quantize their 8-bit input to 7-bit codes (step ×2) "
            f"{why}; the simulated model keeps 8 bits, so real and simulated outputs differ by that rounding")
        logger.warning("note: %s", report.notes[-1])
    state.kernels = report
    return report


def _int8_layers(unet: nn.Module) -> list[Int8Layer]:
    return [m for m in unet.modules() if isinstance(m, Int8Layer)]


def resident_weight_mb(unet: nn.Module) -> float:
    """Resident weight memory of a U-Net in MiB: its real tensors plus the int8 layers' prepacked weights."""
    tensors = [t for t in list(unet.parameters()) + list(unet.buffers()) if t.device.type != "meta"]
    total = sum(t.numel() * t.element_size() for t in tensors)
    total += sum(m.weight_bytes for m in _int8_layers(unet))
    return total / 2**20
