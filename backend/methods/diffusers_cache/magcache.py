"""MagCache (diffusers' ``apply_mag_cache``) with the magnitude ratios it needs, calibrated on the model itself.

MagCache skips the transformer's blocks at a step when the accumulated change of the blocks' residual magnitude,
predicted from per-step ratios ``mag_ratios``, stays under a threshold. The ratios are checkpoint-dependent;
diffusers ships only Flux.1-dev's. Speedlab measures them at build time with diffusers' own calibration mode (no
block skipped): one generation of a fixed prompt and seed at the model's default steps, so the same variant always
gets the same ratios and every image stays a function of its seed. At each call the ratios are interpolated to
that call's step count (diffusers' nearest interpolation), read from the pipeline's scheduler.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

CALIBRATION_PROMPT = "a small red circle above a large blue square"  # any prompt: the ratios barely depend on it
CALIBRATION_SEED = 0


def _state_manager(net: torch.nn.Module):
    """The StateManager of the MagCache hooks attached to ``net`` (they share one)."""
    from diffusers.hooks.mag_cache import _MAG_CACHE_LEADER_BLOCK_HOOK

    for module in net.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook(_MAG_CACHE_LEADER_BLOCK_HOOK) if registry is not None else None
        if hook is not None:
            return hook.state_manager
    raise ValueError("diffusers_cache.kind: 'magcache' found no transformer blocks to hook in the denoiser")


def calibrate(pipe, net: torch.nn.Module, steps: int) -> list[float]:
    """diffusers' MagCache calibration run on ``net`` (no block skipped): per step, the mean ratio of the blocks'
    residual magnitude to the previous step's (1.0 at the first step)."""
    from diffusers.hooks.mag_cache import MagCacheConfig, apply_mag_cache

    from backend.methods.quant.calibrate import guidance_of
    from backend.seeded import seeded_images

    # one step more than run: diffusers prints and clears the ratios after its last step; they are read per call
    apply_mag_cache(net, MagCacheConfig(calibrate=True, num_inference_steps=steps + 1))
    manager, ratios = _state_manager(net), []
    handle = net.register_forward_hook(lambda *_: ratios.append(manager.get_state().calibration_ratios[-1]))
    try:
        seeded_images(pipe, [CALIBRATION_PROMPT], [CALIBRATION_SEED], steps, guidance_of(pipe))
    finally:
        handle.remove()
        manager.reset()
    return ratios


def attach(pipe, net: torch.nn.Module, threshold: float, max_skip_steps: int) -> Callable[[], None]:
    """Calibrate, then attach MagCache to ``net``; returns the callback that fits its ratios to a new call's step
    count (call it before each pipeline call's first denoiser call)."""
    from diffusers.hooks.mag_cache import MagCacheConfig, apply_mag_cache

    from backend.models import model_defaults

    ratios = calibrate(pipe, net, int(model_defaults(pipe)["steps"]))
    live = MagCacheConfig(threshold=threshold, max_skip_steps=max_skip_steps, mag_ratios=ratios,
                          num_inference_steps=len(ratios))
    apply_mag_cache(net, live)  # replaces the calibration hooks

    def fit_to_call() -> None:
        steps = len(pipe.scheduler.timesteps)
        if steps and steps != live.num_inference_steps:
            fitted = MagCacheConfig(mag_ratios=ratios, num_inference_steps=steps)
            live.mag_ratios, live.num_inference_steps = fitted.mag_ratios, steps

    return fit_to_call
