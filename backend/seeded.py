"""Seeded sampling with a pipeline's own call, below the Variant: the same seed draws the same initial noise in
every variant (what ``backend.sampling.generate`` runs for a Variant, and what a method replays to see its
denoiser's calls)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import torch
from diffusers import DiffusionPipeline

from backend.models import denoiser, model_defaults, model_family


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


def seeded_images(
    pipe: DiffusionPipeline, prompts: list[str], seeds: list[int], steps: int, guidance: float,
    height: int | None = None, width: int | None = None, on_step: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Images (N×H×W×3 float in [0, 1]) for prompts[i] with seeds[i] at ``steps`` and ``guidance``; the size defaults
    to the model's. The pipeline's own call with its scheduler, the family's extra arguments, seeded latents."""
    defaults = model_defaults(pipe)
    if height is None or width is None:
        _, _, native = latent_geometry(pipe)
        height, width = height or defaults.get("height") or native, width or defaults.get("width") or native
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
            on_step(i + 1, max(steps, len(pipe.scheduler.timesteps)))

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
    if "clean_caption" in accepted:  # PixArt's T5 caption cleaning runs only where bs4 and ftfy are installed
        extra["clean_caption"] = False  # the same prompt must give the same image on every machine
    if "max_sequence_length" in accepted and defaults.get("max_sequence_length"):
        extra["max_sequence_length"] = int(defaults["max_sequence_length"])
    with torch.inference_mode():
        out = pipe(
            prompts, num_inference_steps=steps, guidance_scale=guidance, height=height, width=width,
            latents=latents, output_type="np",
            generator=gens,  # the same generators go on to draw any sampler noise (LCM, DDIM eta > 0)
            **extra,
        )
    return np.asarray(out.images, dtype=np.float32)
