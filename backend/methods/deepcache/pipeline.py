"""DeepCache on a pipeline: the U-Net hook (or, on a transformer, block caching) plus the call boundaries.

:func:`apply` attaches :func:`apply_deepcache` to ``pipe.unet`` and gives the pipeline a ``__call__`` that runs
inside :func:`deepcache_call` with the pipeline's scheduler: every call starts a fresh schedule and frees the
cache when it returns or raises. The pipeline's class keeps its name (saved pipelines say the same);
:func:`remove` gives the original class back.
"""

from __future__ import annotations

import functools

import torch

from backend.methods.deepcache.blocks import apply_block_cache, remove_block_cache
from backend.methods.deepcache.config import DeepCacheConfig
from backend.methods.deepcache.hook import DeepCacheHook, apply_deepcache, deepcache_call, remove_deepcache

_DEFAULT = DeepCacheConfig()


@functools.cache
def _with_call_boundaries(cls: type) -> type:
    """``cls`` (same name, same signature) whose ``__call__`` is one :func:`deepcache_call`."""

    @functools.wraps(cls.__call__)
    def __call__(self, *args, **kwargs):
        with deepcache_call(_denoiser_of(self), self.scheduler):
            return cls.__call__(self, *args, **kwargs)

    return type(cls.__name__, (cls,), {"__call__": __call__, "_deepcache_base": cls, "__module__": cls.__module__,
                                       "__doc__": cls.__doc__})


def _base_class(pipe) -> type | None:
    """The class :func:`apply` replaced, or None when ``pipe`` has its own class."""
    return type(pipe).__dict__.get("_deepcache_base")


def _denoiser_of(pipe) -> torch.nn.Module:
    for name in ("unet", "transformer"):
        net = getattr(pipe, name, None)
        if net is not None:
            return net
    raise ValueError(f"deepcache: pipeline {type(pipe).__name__} has no U-Net and no transformer; allowed: a U-Net "
                     "pipeline or a PixArt / SD3 / Flux pipeline")


def apply(pipe, config: DeepCacheConfig | dict | None = None) -> DeepCacheHook:
    """Attach DeepCache to ``pipe`` in place (block caching on a transformer); applying again replaces the
    previous one (twice == once). The knobs of the other kind of model refuse in one line."""
    if config is None or isinstance(config, dict):
        config = DeepCacheConfig.from_dict(config)
    net = _denoiser_of(pipe)
    if getattr(pipe, "unet", None) is None:
        if config.branch != _DEFAULT.branch:
            raise ValueError(f"deepcache.branch: {config.branch} is a U-Net knob; {type(net).__name__} is a "
                             "transformer: allowed: first_blocks / last_blocks")
        hook = apply_block_cache(net, config)
    else:
        for key in ("first_blocks", "last_blocks"):
            if getattr(config, key) != getattr(_DEFAULT, key):
                raise ValueError(f"deepcache.{key}: {getattr(config, key)} is a transformer (DiT) knob; "
                                 f"{type(net).__name__} is a U-Net: allowed: branch")
        hook = apply_deepcache(net, config)
    if _base_class(pipe) is None:
        pipe.__class__ = _with_call_boundaries(type(pipe))
    return hook


def remove(pipe) -> None:
    """Detach DeepCache from ``pipe``: the original U-Net forward and pipeline class (no-op when not applied)."""
    unet, transformer = getattr(pipe, "unet", None), getattr(pipe, "transformer", None)
    if unet is not None:
        remove_deepcache(unet)
    elif transformer is not None:
        remove_block_cache(transformer)
    base = _base_class(pipe)
    if base is not None:
        pipe.__class__ = base
