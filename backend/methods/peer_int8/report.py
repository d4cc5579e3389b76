"""Which operators a denoiser evaluation really runs, int8 or floating point: counted, not assumed.

:func:`measure_ops` runs a one-step generation and profiles (``torch.profiler``) the denoiser's first forward
only, counting the kernels that ran: integer ones (``aten::_int_mm``, ``quantized::linear_dynamic``, oneDNN
``qlinear`` / ``qconv``) apart from floating-point ones (``mm``, ``addmm``, ``bmm``, ``convolution``, attention).
The profiler sees nested operators, so a library op that dequantizes and multiplies in floating point counts as
fp, and one that calls an integer matmul counts as int8.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

INT8_OPS = ("aten::_int_mm", "quantized::linear_dynamic", "quantized::linear", "quantized::conv2d",
            "onednn::qlinear_pointwise", "onednn::qconv2d_pointwise", "aten::_weight_int8pack_mm")
FP_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::convolution",
          "aten::_scaled_dot_product_flash_attention_for_cpu")


@dataclass
class OpReport:
    """Operator counts of one denoiser evaluation (a CFG batch), by kind."""

    int8: dict[str, int] = field(default_factory=dict)
    fp: dict[str, int] = field(default_factory=dict)
    isa: str = ""

    def summary(self) -> str:
        def fmt(counts: dict[str, int]) -> str:
            return ", ".join(f"{k.split('::')[-1]} ×{v}" for k, v in sorted(counts.items())) or "none"

        return (f"int8 ops per denoiser evaluation: {fmt(self.int8)}; floating point: {fmt(self.fp)} "
                f"(measured on this CPU{', ' + self.isa if self.isa else ''})")


def sample(pipe, prompts: list[str], steps: int, smallest: bool = False) -> None:
    """A seeded generation through the pipeline's own call (Speedlab's, with the family's arguments) at the model's
    default size (calibration), or at the smallest size its denoiser takes (``smallest``: which operators run does
    not depend on the size)."""
    from backend.methods.quant.calibrate import guidance_of
    from backend.seeded import latent_geometry, seeded_images

    side = latent_geometry(pipe)[1] if smallest else None
    seeded_images(pipe, prompts, [0] * len(prompts), steps, guidance_of(pipe), height=side, width=side)


def measure_ops(pipe, model: torch.nn.Module) -> OpReport:
    """Count the ops of ``model``'s first forward during a one-step generation of ``pipe``."""
    from backend.methods.quant.isa import cpu_isa

    profiler, state = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]), {"done": False}

    def pre(module, args):
        if not state["done"]:
            profiler.start()

    def post(module, args, out):
        if not state["done"]:
            profiler.stop()
            state["done"] = True

    handles = [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]
    try:
        sample(pipe, ["a photograph"], steps=1, smallest=True)
    finally:
        for h in handles:
            h.remove()
    counts = {e.key: e.count for e in profiler.key_averages()}
    return OpReport(int8={k: v for k, v in counts.items() if k in INT8_OPS},
                    fp={k: v for k, v in counts.items() if k in FP_OPS}, isa=cpu_isa().name)
