"""DeepCache (Ma et al., CVPR 2024): training-free reuse of a U-Net's deep features between full evaluations.

On a pipeline (what a Variant's ``"deepcache"`` section does):

    from backend.methods.deepcache import DeepCacheConfig, apply, remove
    apply(pipe, DeepCacheConfig(interval=3, branch=0))   # in place; twice == once
    images = pipe(prompt).images                         # each call: a fresh schedule, the cache freed after
    remove(pipe)                                         # the original forward and class again

On a bare U-Net, in the style of diffusers' cache hooks:

    apply_deepcache(unet, DeepCacheConfig(interval=3))
    with deepcache_call(unet, scheduler):                # one denoising call
        ...                                              # unet(...) as usual
    remove_deepcache(unet)

Variant section: ``"deepcache": {"interval": 3, "branch": 0, "schedule": "uniform"}``.
"""

from backend.methods.deepcache.config import DeepCacheConfig
from backend.methods.deepcache.hook import (
    DeepCacheHook,
    apply_deepcache,
    cached_tensors,
    deepcache_call,
    get_hook,
    remove_deepcache,
)
from backend.methods.deepcache.partial import MIRRORED_DIFFUSERS, plan_branch, valid_branches
from backend.methods.deepcache.pipeline import apply, remove
from backend.methods.deepcache.schedule import nonuniform_full_steps, uniform_full_steps

__all__ = [
    "MIRRORED_DIFFUSERS",
    "DeepCacheConfig",
    "DeepCacheHook",
    "apply",
    "apply_deepcache",
    "cached_tensors",
    "deepcache_call",
    "get_hook",
    "nonuniform_full_steps",
    "plan_branch",
    "remove",
    "remove_deepcache",
    "uniform_full_steps",
    "valid_branches",
]
