"""The diffusers 0.42 cache hooks (PyramidAttentionBroadcast, FirstBlockCache, FasterCache, TaylorSeer, MagCache) as a
method.

``apply(pipe, DiffusersCacheConfig(kind="pab"))`` attaches the hook to ``denoiser(pipe)`` (its transformer or U-Net)
with diffusers' module-level ``apply_*`` functions. Which family runs which hook is the table
:data:`~backend.methods.diffusers_cache.config.REFUSED` (each pair established by a test); a refused pair is one
line, before anything is attached.

Only Flux's pipeline (its transformer is a ``CacheMixin``) gives the hooks what they need: a cache context around
each denoiser call and a reset at the end of the call. For the other pipelines (U-Nets, PixArt, SD3) a forward
pre-hook on the denoiser does it: it records the current timestep, resets the stateful hooks when the timestep
goes up (a new call) and sets the cache context ``"cond"`` (one context: these pipelines batch CFG into one call).
MagCache's ratios are calibrated on the model when it is attached (:mod:`.magcache`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from backend.methods.diffusers_cache.config import (
    DIT_ONLY,
    KINDS,
    REFUSED,
    UNET_KINDS,
    DiffusersCacheConfig,
)
from backend.models import call_timestep, denoiser, model_family

__all__ = ["DIT_ONLY", "KINDS", "REFUSED", "UNET_KINDS", "DiffusersCacheConfig", "apply", "denoiser"]

TAYLORSEER_BLOCKS = {"pixart": (r"^transformer_blocks\.\d+\.attn[12]$",)}  # diffusers' default misses attn1/attn2
# the denoiser inputs FasterCache splits into the CFG batch's halves: diffusers' list, plus SD3's pooled text
FASTER_BATCHED_INPUTS = {"sd3": ("pooled_projections",)}


class _CallState:
    """The denoiser's current timestep (0–1000), a fresh hook state at each new call and the cache context, for
    pipelines that do not manage them (``own_calls`` False: the pipeline sets the context and resets itself)."""

    def __init__(self, model: torch.nn.Module, own_calls: bool):
        self.model, self.own_calls, self.t = model, own_calls, None
        self.on_new_call: Callable[[], None] | None = None  # run before a pipeline call's first denoiser call

    def __call__(self, module, args, kwargs) -> None:
        t = call_timestep(module, args, kwargs)  # the scheduler's timestep: the hooks' windows are in 0–1000
        t = float(t.flatten()[0]) if isinstance(t, torch.Tensor) else float(t)
        new_call = self.t is None or t > self.t
        if new_call and self.on_new_call is not None:
            self.on_new_call()
        if self.own_calls:
            from diffusers.hooks import HookRegistry
            from diffusers.hooks.hooks import CacheContext, _set_cache_context  # what CacheMixin.cache_context sets

            if new_call and self.t is not None:
                HookRegistry.check_if_exists_or_initialize(self.model).reset_stateful_hooks()
            _set_cache_context(self.model, CacheContext("cond", timestep=t))
        self.t = t

    def current(self) -> float:
        return self.t if self.t is not None else 1000.0


def _hook_config(config: DiffusersCacheConfig, family: str, timestep: _CallState):
    from diffusers import hooks

    window = (config.timestep_from, config.timestep_to)
    if config.kind == "pab":
        return hooks.PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=config.skip_range, spatial_attention_timestep_skip_range=window,
            current_timestep_callback=timestep.current)
    if config.kind == "fbc":
        return hooks.FirstBlockCacheConfig(threshold=config.threshold)
    if config.kind == "faster":
        return hooks.FasterCacheConfig(
            spatial_attention_block_skip_range=config.skip_range, spatial_attention_timestep_skip_range=window,
            unconditional_batch_skip_range=config.skip_range, unconditional_batch_timestep_skip_range=window,
            current_timestep_callback=timestep.current, attention_weight_callback=lambda _: 0.5,
            tensor_format="BCFHW" if family in REFUSED["faster"] else "BCHW",
            _unconditional_conditional_input_kwargs_identifiers=[
                *hooks.FasterCacheConfig._unconditional_conditional_input_kwargs_identifiers,
                *FASTER_BATCHED_INPUTS.get(family, ())])
    return hooks.TaylorSeerCacheConfig(cache_interval=config.skip_range, taylor_factors_dtype=torch.float32,
                                       cache_identifiers=list(TAYLORSEER_BLOCKS.get(family, ())) or None)


def apply(pipe, config: DiffusersCacheConfig | dict | None = None) -> None:
    """Attach the configured cache hook to the pipeline's denoiser (ValueError, nothing attached, where it cannot)."""
    if not isinstance(config, DiffusersCacheConfig):
        config = DiffusersCacheConfig.from_dict(config)
    family = model_family(pipe)
    refusal = config.family_refusal(family)
    if refusal:
        raise ValueError(refusal)
    from diffusers import hooks
    from diffusers.models.cache_utils import CacheMixin

    model = denoiser(pipe)
    call = _CallState(model, own_calls=not isinstance(model, CacheMixin))
    model.register_forward_pre_hook(call, with_kwargs=True)
    if config.kind == "magcache":
        from backend.methods.diffusers_cache.magcache import attach

        call.on_new_call = attach(pipe, model, config.threshold, max_skip_steps=config.skip_range - 1)
    else:
        apply_hook = {"pab": hooks.apply_pyramid_attention_broadcast, "fbc": hooks.apply_first_block_cache,
                      "faster": hooks.apply_faster_cache, "taylorseer": hooks.apply_taylorseer_cache}[config.kind]
        apply_hook(model, _hook_config(config, family, call))
    hooks.HookRegistry.check_if_exists_or_initialize(model).invalidate_child_registries_cache()
