"""Sampling with a Variant's settings: its bare model, the resolved image size, and seeded generation (same seed,
same initial noise) — what every layer that draws images uses, methods included."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

from backend.models import FLOW_FAMILIES, denoiser, load_pipeline, model_defaults, model_family
from backend.variant import SCHEDULER_CLASSES, Variant, VariantError

FLOW_SCHEDULERS = {"euler": FlowMatchEulerDiscreteScheduler}  # the Variant's names that apply to flow matching


def load_model(variant: Variant) -> DiffusionPipeline:
    """The variant's model (no scheduler change, no methods): a fresh pipeline sharing the cached weights."""
    return load_pipeline(variant.model, variant.device, variant.dtype, variant.model_config,
                         bool(variant.allow_pickle))


def scheduler_for(pipe: DiffusionPipeline, name: str):
    """The Variant's scheduler ``name`` configured like the model's own; VariantError for a scheduler that does not
    apply to the model (a DDPM-type sampler on a flow-matching model)."""
    family = model_family(pipe)
    if family in FLOW_FAMILIES:
        if name not in FLOW_SCHEDULERS:
            raise VariantError(f"scheduler: {name!r} does not apply to the flow-matching family {family!r}; allowed: "
                               f"{', '.join(FLOW_SCHEDULERS)} (FlowMatchEulerDiscreteScheduler), or leave it out")
        return FLOW_SCHEDULERS[name].from_config(pipe.scheduler.config)
    return SCHEDULER_CLASSES[name].from_config(pipe.scheduler.config)


def latent_geometry(pipe: DiffusionPipeline) -> tuple[int, int, int]:
    """(latent channels, the factor image sides must be a multiple of, the native image side) of the model."""
    net, vae_f = denoiser(pipe), pipe.vae_scale_factor
    cfg = net.config
    family = model_family(pipe)
    if family == "flux":  # 2x2 latent patches packed into the sequence
        return cfg.in_channels // 4, vae_f * 2, pipe.default_sample_size * vae_f
    if hasattr(cfg, "patch_size"):  # PixArt, SD3
        return cfg.in_channels, vae_f * cfg.patch_size, cfg.sample_size * vae_f
    return cfg.in_channels, vae_f * 2 ** (len(cfg.block_out_channels) - 1), cfg.sample_size * vae_f


def resolved_size(pipe: DiffusionPipeline, variant: Variant) -> tuple[int, int]:
    """Height and width for the variant; VariantError unless they fit the VAE's downsampling."""
    defaults = model_defaults(pipe)
    _, factor, native = latent_geometry(pipe)
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
    net = denoiser(pipe)
    device = next(net.parameters()).device  # not net.device: that walks every module (ms per call)
    gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    channels = latent_geometry(pipe)[0]
    shape = (channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    latents = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device, net.dtype)
    if model_family(pipe) == "flux":  # Flux takes its latents packed as a sequence of 2x2 patches
        latents = pipe._pack_latents(latents, len(seeds), *shape)

    def step_done(i: int) -> None:  # PNDM (PLMS) and others run more U-Net steps than asked: count what runs
        if on_step is not None:
            on_step(i + 1, max(variant.steps, len(pipe.scheduler.timesteps)))

    def callback(p, i, t, kwargs):
        step_done(i)
        return kwargs

    accepted = inspect.signature(type(pipe).__call__).parameters
    extra: dict = {}
    if "callback_on_step_end" in accepted:
        extra["callback_on_step_end"] = callback
    else:  # PixArt: the older per-step callback
        extra.update(callback=lambda i, t, x: step_done(i), callback_steps=1)
    if "use_resolution_binning" in accepted:  # PixArt would snap the size to its aspect-ratio bins
        extra["use_resolution_binning"] = False
    if "max_sequence_length" in accepted and defaults.get("max_sequence_length"):
        extra["max_sequence_length"] = int(defaults["max_sequence_length"])
    with torch.inference_mode():
        out = pipe(
            prompts, num_inference_steps=variant.steps, guidance_scale=guidance, height=height, width=width,
            latents=latents, output_type="np",
            generator=gens,  # the same generators go on to draw any sampler noise (LCM, DDIM eta > 0)
            **extra,
        )
    return np.asarray(out.images, dtype=np.float32)


def seeded_sampler(pipe: DiffusionPipeline, steps: int | None = None) -> Callable:
    """``(pipe, prompts, seeds) -> images``: DDIM at ``steps`` (default: the model's) with :func:`generate`'s seeded
    noise. What a method that judges its own student (the EfficientDM quality watch) receives from its caller."""
    from backend.metadata import pipeline_info

    variant = Variant.from_dict({"model": pipeline_info(pipe).source, "scheduler": "ddim",
                                 "steps": steps or model_defaults(pipe).get("steps", 50)})
    return lambda p, prompts, seeds: generate(p, variant, prompts, seeds)
