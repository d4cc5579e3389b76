"""DeepCache (Ma et al., CVPR 2024): training-free reuse of a U-Net's deep features between full evaluations.

    from backend.methods.deepcache import DeepCacheConfig, apply, remove
    apply(pipe, DeepCacheConfig(interval=3, branch=0))   # in place; twice == once
    images = pipe(prompt).images
    remove(pipe)                                         # the original forward again

Variant section: ``"deepcache": {"interval": 3, "branch": 0, "schedule": "uniform"}``.
"""

from backend.methods.deepcache.config import DeepCacheConfig
from backend.methods.deepcache.hook import (
    DeepCacheHook,
    apply,
    get_hook,
    plan_branch,
    remove,
    reset,
    valid_branches,
)
from backend.methods.deepcache.schedule import nonuniform_full_steps, uniform_full_steps

__all__ = [
    "DeepCacheConfig",
    "DeepCacheHook",
    "apply",
    "get_hook",
    "nonuniform_full_steps",
    "plan_branch",
    "remove",
    "reset",
    "uniform_full_steps",
    "valid_branches",
]
