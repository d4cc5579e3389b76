"""Sampling with a Variant's settings: its bare model, the resolved image size, and seeded generation (same seed,
same initial noise) — what every layer that draws images uses, methods included."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, FlowMatchLCMScheduler

from backend.models import FLOW_FAMILIES, load_pipeline, model_defaults, model_family
from backend.seeded import latent_geometry, seeded_images
from backend.variant import SCHEDULER_CLASSES, Variant, VariantError

# the Variant's names that apply to flow matching ("lcm": the flow consistency sampler, for SD3 consistency students)
FLOW_SCHEDULERS = {"euler": FlowMatchEulerDiscreteScheduler, "lcm": FlowMatchLCMScheduler}


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
            allowed = ", ".join(f"{k} ({v.__name__})" for k, v in FLOW_SCHEDULERS.items())
            raise VariantError(f"scheduler: {name!r} does not apply to the flow-matching family {family!r}; allowed: "
                               f"{allowed}, or leave it out")
        return FLOW_SCHEDULERS[name].from_config(pipe.scheduler.config)
    return SCHEDULER_CLASSES[name].from_config(pipe.scheduler.config)


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
    height, width = resolved_size(pipe, variant)
    guidance = variant.guidance if variant.guidance is not None else model_defaults(pipe).get("guidance", 7.5)
    return seeded_images(pipe, prompts, seeds, variant.steps, guidance, height, width, on_step)


def seeded_sampler(pipe: DiffusionPipeline, steps: int | None = None) -> Callable:
    """``(pipe, prompts, seeds) -> images``: DDIM at ``steps`` (default: the model's) with :func:`generate`'s seeded
    noise. What a method that judges its own student (the EfficientDM quality watch) receives from its caller."""
    from backend.metadata import pipeline_info

    variant = Variant.from_dict({"model": pipeline_info(pipe).source, "scheduler": "ddim",
                                 "steps": steps or model_defaults(pipe).get("steps", 50)})
    return lambda p, prompts, seeds: generate(p, variant, prompts, seeds)
