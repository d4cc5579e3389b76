"""Turn a Variant into a ready pipeline (methods applied) and generate seeded images with it."""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
)

from backend.models import load_pipeline, model_defaults
from backend.runs.variant import Variant, VariantError

SCHEDULER_CLASSES = {
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "lcm": LCMScheduler,
}
# Applied in this order: a consistency student replaces weights, quantization wraps layers,
# DeepCache hooks the (possibly quantized) U-Net from outside.
METHOD_ORDER = ("consistency", "quant", "deepcache")


def build_pipeline(variant: Variant) -> DiffusionPipeline:
    """A pipeline for the variant: its model, scheduler and methods; the base weights stay untouched."""
    pipe = load_pipeline(variant.model, variant.device, variant.dtype)
    if variant.scheduler:
        pipe.scheduler = SCHEDULER_CLASSES[variant.scheduler].from_config(pipe.scheduler.config)
    configs = {s: variant.method(s) for s in METHOD_ORDER}
    if configs["quant"] is not None and configs["consistency"] is None:  # may skip copying quantized weights
        pipe.unet = importlib.import_module("backend.methods.quant").private_unet(pipe.unet, configs["quant"])
    elif any(configs.values()):
        pipe.unet = copy.deepcopy(pipe.unet)  # methods change the U-Net; keep the shared base clean
    for section in METHOD_ORDER:
        if configs[section] is not None:
            importlib.import_module(f"backend.methods.{section}").apply(pipe, configs[section])
    pipe.speedlab_variant = variant
    return pipe


def resolved_size(pipe: DiffusionPipeline, variant: Variant) -> tuple[int, int]:
    """Height and width for the variant; VariantError unless they fit the VAE's downsampling."""
    defaults = model_defaults(pipe)
    factor = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    size = []
    for key in ("height", "width"):
        value = getattr(variant, key) or defaults.get(key) or native
        if value % factor:
            raise VariantError(f"{key}: {value} must be a multiple of {factor} for this model")
        size.append(value)
    return size[0], size[1]


def generate(
    pipe: DiffusionPipeline, variant: Variant, prompts: list[str], seeds: list[int],
    on_step: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Images (N×H×W×3 float in [0, 1]) for prompts[i] with seeds[i]; same seed, same initial noise."""
    if len(prompts) != len(seeds):
        raise ValueError("prompts and seeds must have the same length")
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt.strip():
            raise VariantError(f"prompt {prompt!r} is empty; give a non-empty text prompt")
    defaults = model_defaults(pipe)
    height, width = resolved_size(pipe, variant)
    guidance = variant.guidance if variant.guidance is not None else defaults.get("guidance", 7.5)
    device = next(pipe.unet.parameters()).device  # not unet.device: that walks every module (ms per call)
    gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    shape = (pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    latents = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device, pipe.unet.dtype)

    def callback(p, i, t, kwargs):
        if on_step is not None:
            on_step(i + 1, variant.steps)
        return kwargs

    with torch.inference_mode():
        out = pipe(
            prompts, num_inference_steps=variant.steps, guidance_scale=guidance, height=height, width=width,
            latents=latents, output_type="np", callback_on_step_end=callback,
            generator=gens,  # the same generators go on to draw any sampler noise (LCM, DDIM eta > 0)
        )
    return np.asarray(out.images, dtype=np.float32)
