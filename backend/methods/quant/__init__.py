"""Low-bit quantization of the U-Net: PTQ, and EfficientDM (QALoRA + TALSQ) / full-QAT fine-tuned checkpoints.

``apply(pipe, QuantConfig(...))`` wraps ``denoiser(pipe)`` in place: with ``checkpoint`` it loads a saved
quantized model (bit-exact), otherwise it runs PTQ calibration on the FP model's own trajectory.
By default this is fake quantization (simulated integer arithmetic in fp32): it buys size and shows
quality at low bits; ``kernels: "real"`` runs the layers on int8 CPU kernels for speed (see kernels.py).
"""

from __future__ import annotations

import dataclasses

from backend.metadata import pipeline_info
from backend.methods.quant.config import FinetuneConfig, QuantConfig
from backend.methods.quant.model import get_state, quantize_unet, summary
from backend.methods.quant.model import remove as _remove_unet
from backend.models import denoiser

__all__ = ["QuantConfig", "FinetuneConfig", "apply", "remove", "summary", "ptq", "packed_size_mb"]


def ptq(pipe, config: QuantConfig):
    """Quantize ``denoiser(pipe)`` in place with min/max weights and calibrated activation ranges; the QuantState.
    With ``config.mixed``, the most sensitive layers are raised to W8A8 within its size budget first."""
    from backend.methods.quant.calibrate import calibrate

    raised: list[str] = []
    if config.mixed:
        from backend.methods.quant.mixed import plan

        raised, _ = plan(pipe, config)
    state = quantize_unet(denoiser(pipe), config, base_model=pipeline_info(pipe).source)
    if raised:
        from backend.methods.quant.mixed import promote

        promote(denoiser(pipe), state, raised)
    calibrate(pipe, state, config)
    return state


def apply(pipe, config: QuantConfig) -> None:
    """Quantize ``denoiser(pipe)`` (already a private copy) by the config: load its checkpoint, or PTQ."""
    if not isinstance(config, QuantConfig):
        config = QuantConfig.from_dict(config)
    if config.checkpoint:
        from backend.methods.quant.checkpoint import (
            CheckpointError,
            checkpoint_size_mb,
            config_from_meta,
            load_checkpoint,
            read_meta,
        )

        saved = config_from_meta(read_meta(config.checkpoint), config.checkpoint)
        default = QuantConfig()
        for f in dataclasses.fields(QuantConfig):
            if f.name in ("checkpoint", "method", "kernels"):
                continue
            given = getattr(config, f.name)
            if given != getattr(default, f.name) and given != getattr(saved, f.name):
                raise CheckpointError(f"quant.{f.name}: {given!r} conflicts with the checkpoint's "
                                      f"{getattr(saved, f.name)!r}; allowed: leave it out or give the same value")
        load_checkpoint(denoiser(pipe), config.checkpoint, base_model=pipeline_info(pipe).source)
        denoiser(pipe).eval()
        pipeline_info(pipe).model_size_mb = checkpoint_size_mb(config.checkpoint)
    else:
        ptq(pipe, config)
        denoiser(pipe).eval()
        pipeline_info(pipe).model_size_mb = packed_size_mb(denoiser(pipe))
    use_kernels(pipe, config.kernels)


def private_unet(unet, config: QuantConfig):
    """The U-Net copy a variant quantizes: a lean one (no fp32 copy of the quantized weights) when a
    checkpoint will be loaded onto real kernels, else a deep copy."""
    import copy

    from backend.methods.quant.checkpoint import read_meta
    from backend.methods.quant.kernels import lean_copy, module_device, unavailable_reason

    if not isinstance(config, QuantConfig):
        config = QuantConfig.from_dict(config)
    if config.checkpoint and config.kernels == "real" and not unavailable_reason(module_device(unet)):
        return lean_copy(unet, list(read_meta(config.checkpoint).get("layers", {})))
    return copy.deepcopy(unet)


def use_kernels(pipe, kernels: str) -> None:
    """Run the quantized U-Net on ``kernels`` ("simulated" or "real"); realize logs a fallback to simulated."""
    from backend.methods.quant.kernels import realize

    report = realize(denoiser(pipe), kernels)
    pipeline_info(pipe).kernels = report.summary()


def packed_size_mb(unet) -> float:
    """The quantized U-Net's real low-bit size: the bytes of its packed checkpoint tensors, in MiB."""
    from backend.methods.quant.checkpoint import model_tensors

    return sum(t.numel() * t.element_size() for t in model_tensors(unet).values()) / 2**20


def remove(pipe) -> None:
    """Restore the FP layers of ``denoiser(pipe)``."""
    _remove_unet(denoiser(pipe))


def is_quantized(pipe) -> bool:
    return get_state(denoiser(pipe)) is not None
