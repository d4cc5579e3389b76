"""The diffusers 0.42 cache hooks (PyramidAttentionBroadcast, FirstBlockCache, FasterCache, TaylorSeer) as a method.

``apply(pipe, DiffusersCacheConfig(kind="pab"))`` attaches the hook to the pipeline's denoiser (its transformer or
U-Net). Tested on ``UNet2DConditionModel``: only PAB attaches and runs correctly (skip_range 1 equals no cache;
every call starts from a fresh state); the others are refused there with one line and become live on DiT
pipelines (:data:`~backend.methods.diffusers_cache.config.DIT_ONLY`).

U-Net pipelines give the hooks no current timestep or call boundary, so :func:`apply` adds both: a forward
pre-hook records the denoiser's timestep argument, and a timestep above the previous one (a new call)
resets the stateful hooks.
"""

from __future__ import annotations

import torch

from backend.methods.diffusers_cache.config import DIT_ONLY, KINDS, UNET_KINDS, DiffusersCacheConfig
from backend.models import denoiser

__all__ = ["DIT_ONLY", "KINDS", "UNET_KINDS", "DiffusersCacheConfig", "apply", "denoiser"]



def _is_unet(model: torch.nn.Module) -> bool:
    from diffusers import UNet2DConditionModel, UNet2DModel

    return isinstance(model, (UNet2DConditionModel, UNet2DModel))


class _Timestep:
    """The denoiser's current timestep (its second argument); a new call resets the stateful hooks."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.t = model, None

    def __call__(self, module, args, kwargs) -> None:
        t = args[1] if len(args) > 1 else kwargs.get("timestep")
        t = float(t.flatten()[0]) if isinstance(t, torch.Tensor) else float(t)
        if self.t is not None and t > self.t:
            from diffusers.hooks import HookRegistry

            HookRegistry.check_if_exists_or_initialize(self.model).reset_stateful_hooks()
        self.t = t

    def current(self) -> float:
        return self.t if self.t is not None else 1000.0


def _hook_config(config: DiffusersCacheConfig, timestep: _Timestep):
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
            current_timestep_callback=timestep.current, attention_weight_callback=lambda _: 0.5)
    return hooks.TaylorSeerCacheConfig(cache_interval=config.skip_range)


def apply(pipe, config: DiffusersCacheConfig | dict | None = None) -> None:
    """Attach the configured cache hook to the pipeline's denoiser (ValueError, nothing attached, where it cannot)."""
    if not isinstance(config, DiffusersCacheConfig):
        config = DiffusersCacheConfig.from_dict(config)
    model = denoiser(pipe)
    if _is_unet(model) and config.kind not in UNET_KINDS:
        raise ValueError(f"diffusers_cache.kind: {config.kind!r} is DiT only ({DIT_ONLY[config.kind]}); allowed on "
                         f"a U-Net: {', '.join(UNET_KINDS)}")
    from diffusers import hooks

    timestep = _Timestep(model)
    model.register_forward_pre_hook(timestep, with_kwargs=True)
    apply_hook = {"pab": hooks.apply_pyramid_attention_broadcast, "fbc": hooks.apply_first_block_cache,
                  "faster": hooks.apply_faster_cache, "taylorseer": hooks.apply_taylorseer_cache}[config.kind]
    apply_hook(model, _hook_config(config, timestep))
