"""Turn a Variant into a ready pipeline: its model, scheduler and methods, applied in the registry's order."""

from __future__ import annotations

import copy

import torch
from diffusers import DiffusionPipeline

from backend.metadata import pipeline_info
from backend.methods import registry
from backend.models import denoiser, model_family, set_denoiser
from backend.sampling import load_model, scheduler_for
from backend.variant import Variant


def shared_weights_unet(unet: torch.nn.Module) -> torch.nn.Module:
    """A new denoiser (U-Net or transformer) module tree on the same weight tensors (for methods that hook but
    never write weights).

    The very same tensors run, so outputs are bit-identical to the base denoiser's; no memory is copied.
    """
    with torch.device("meta"):
        view = type(unet).from_config(unet.config)
    view.load_state_dict(unet.state_dict(keep_vars=True), assign=True)
    view.set_attn_processor(dict(unet.attn_processors))
    if any(t.is_meta for t in (*view.parameters(), *view.buffers())):  # a buffer outside the state dict
        return copy.deepcopy(unet)
    return view.eval().requires_grad_(False)


def private_unet(unet: torch.nn.Module, first: registry.Method, config) -> torch.nn.Module:
    """The denoiser (U-Net or transformer) the methods may change, chosen by the first method applied: a deep copy
    when it writes weights, the method's own private copy, or a shared-weights view when it only hooks; the cached
    base stays clean."""
    if first.unet_access == "copy":
        return copy.deepcopy(unet)
    if first.unet_access == "own":
        return registry.resolve(first.private_unet)(unet, config)
    return shared_weights_unet(unet)


def build_pipeline(variant: Variant) -> DiffusionPipeline:
    """A pipeline for the variant: its model, scheduler and methods; the base weights stay untouched."""
    pipe = load_model(variant)
    if variant.scheduler:
        pipe.scheduler = scheduler_for(pipe, variant.scheduler)
    on = [(registry.method(s), variant.method(s)) for s in variant.on()]
    family = model_family(pipe)
    for method, config in on:  # every refusal before anything is applied
        reason = method.refusal(family) or config.family_refusal(family)
        if reason:
            raise ValueError(reason)
    if on:
        set_denoiser(pipe, private_unet(denoiser(pipe), *on[0]))
    for method, config in on:
        method.apply_to(pipe, config)
    info = pipeline_info(pipe)
    info.variant, info.applied = variant, tuple(m.section for m, _ in on)
    return pipe
