"""Low-bit quantization of the U-Net: PTQ, and EfficientDM (QALoRA + TALSQ) / full-QAT fine-tuned checkpoints.

``apply(pipe, QuantConfig(...))`` wraps ``pipe.unet`` in place: with ``checkpoint`` it loads a saved
quantized model (bit-exact), otherwise it runs PTQ calibration on the FP model's own trajectory.
All of it is fake quantization (simulated integer arithmetic in fp32): it buys size and shows
quality at low bits, not speed.
"""

from __future__ import annotations

import dataclasses

from backend.methods.quant.config import FinetuneConfig, QuantConfig
from backend.methods.quant.model import get_state, quantize_unet, summary
from backend.methods.quant.model import remove as _remove_unet

__all__ = ["QuantConfig", "FinetuneConfig", "apply", "remove", "summary", "ptq", "packed_size_mb"]


def ptq(pipe, config: QuantConfig):
    """Quantize ``pipe.unet`` in place with min/max weights and calibrated activation ranges; the QuantState."""
    from backend.methods.quant.calibrate import calibrate

    state = quantize_unet(pipe.unet, config, base_model=getattr(pipe, "speedlab_source", ""))
    calibrate(pipe, state, config)
    return state


def apply(pipe, config: QuantConfig) -> None:
    """Quantize ``pipe.unet`` (already a private copy) by the config: load its checkpoint, or PTQ."""
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
            if f.name in ("checkpoint", "method"):
                continue
            given = getattr(config, f.name)
            if given != getattr(default, f.name) and given != getattr(saved, f.name):
                raise CheckpointError(f"quant.{f.name}: {given!r} conflicts with the checkpoint's "
                                      f"{getattr(saved, f.name)!r}; allowed: leave it out or give the same value")
        load_checkpoint(pipe.unet, config.checkpoint, base_model=getattr(pipe, "speedlab_source", ""))
        pipe.unet.eval()
        pipe.speedlab_model_size_mb = checkpoint_size_mb(config.checkpoint)
    else:
        ptq(pipe, config)
        pipe.unet.eval()
        pipe.speedlab_model_size_mb = packed_size_mb(pipe.unet)


def packed_size_mb(unet) -> float:
    """The quantized U-Net's real low-bit size: the bytes of its packed checkpoint tensors, in MiB."""
    from backend.methods.quant.checkpoint import model_tensors

    return sum(t.numel() * t.element_size() for t in model_tensors(unet).values()) / 2**20


def remove(pipe) -> None:
    """Restore the FP layers of ``pipe.unet``."""
    _remove_unet(pipe.unet)


def is_quantized(pipe) -> bool:
    return get_state(pipe.unet) is not None
