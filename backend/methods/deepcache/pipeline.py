"""DeepCache on a pipeline: the U-Net hook plus the call boundaries.

:func:`apply` attaches :func:`apply_deepcache` to ``pipe.unet`` and gives the pipeline a ``__call__`` that runs
inside :func:`deepcache_call` with the pipeline's scheduler: every call starts a fresh schedule and frees the
cache when it returns or raises. The pipeline's class keeps its name (saved pipelines say the same);
:func:`remove` gives the original class back.
"""

from __future__ import annotations

import functools

import torch

from backend.methods.deepcache.config import DeepCacheConfig
from backend.methods.deepcache.hook import DeepCacheHook, apply_deepcache, deepcache_call, remove_deepcache


@functools.cache
def _with_call_boundaries(cls: type) -> type:
    """``cls`` (same name, same signature) whose ``__call__`` is one :func:`deepcache_call`."""

    @functools.wraps(cls.__call__)
    def __call__(self, *args, **kwargs):
        with deepcache_call(self.unet, self.scheduler):
            return cls.__call__(self, *args, **kwargs)

    return type(cls.__name__, (cls,), {"__call__": __call__, "_deepcache_base": cls, "__module__": cls.__module__,
                                       "__doc__": cls.__doc__})


def _base_class(pipe) -> type | None:
    """The class :func:`apply` replaced, or None when ``pipe`` has its own class."""
    return type(pipe).__dict__.get("_deepcache_base")


def _unet_of(pipe) -> torch.nn.Module:
    unet = getattr(pipe, "unet", None)
    if unet is None:
        other = "a transformer (DiT)" if getattr(pipe, "transformer", None) is not None else "no U-Net"
        raise ValueError(f"deepcache: pipeline {type(pipe).__name__} has {other}; DeepCache needs a U-Net pipeline "
                         "(UNet2DConditionModel or UNet2DModel)")
    return unet


def apply(pipe, config: DeepCacheConfig | dict | None = None) -> DeepCacheHook:
    """Attach DeepCache to ``pipe`` in place; applying again replaces the previous one (twice == once)."""
    if config is None or isinstance(config, dict):
        config = DeepCacheConfig.from_dict(config)
    hook = apply_deepcache(_unet_of(pipe), config)
    if _base_class(pipe) is None:
        pipe.__class__ = _with_call_boundaries(type(pipe))
    return hook


def remove(pipe) -> None:
    """Detach DeepCache from ``pipe``: the original U-Net forward and pipeline class (no-op when not applied)."""
    unet = getattr(pipe, "unet", None)
    if unet is not None:
        remove_deepcache(unet)
    base = _base_class(pipe)
    if base is not None:
        pipe.__class__ = base
