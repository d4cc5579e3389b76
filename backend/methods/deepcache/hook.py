"""DeepCache as a diffusers hook on a U-Net, in the style of diffusers' cache hooks (``apply_first_block_cache``):

    hook = apply_deepcache(unet, DeepCacheConfig(interval=3))
    with deepcache_call(unet, scheduler):      # one denoising call: the schedule starts at evaluation 0
        for t in scheduler.timesteps:
            eps = unet(latents, t, encoder_hidden_states=embeds).sample
            ...
    assert cached_tensors(unet) == 0           # the cache is freed when the call ends
    remove_deepcache(unet)                     # the original forward again

A pipeline gets its call boundaries from ``backend.methods.deepcache.apply(pipe, config)``; a U-Net evaluated
outside a call is an error (a schedule needs to know where a call starts).

State lives for one call, one :class:`BranchState` per conditioning branch, each counting its own evaluations
from 0 (so img2img, Heun's two evaluations per step and PLMS's extra one all follow the schedule). A branch is
named by diffusers' ``CacheContext`` when the caller sets one (``diffusers.hooks.hooks._set_cache_context``, what
``cache_context("cond")`` does on diffusers' cache-aware models), else by the conditioning input: batched CFG
holds one cache (both halves in one tensor), CFG as two U-Net calls per step holds two.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from backend.metadata import DEEPCACHE_HOOK
from backend.methods.deepcache.config import DeepCacheConfig
from backend.methods.deepcache.partial import (
    BranchPlan,
    capture,
    check_diffusers_version,
    needs_full,
    partial_forward,
    plan_branch,
)
from backend.methods.deepcache.schedule import full_steps_for


@dataclasses.dataclass
class BranchState(BaseState):
    """One conditioning branch of the current call."""

    key: Any = None                  # the conditioning input that names the branch (no CacheContext)
    index: int = 0                   # U-Net evaluations of this branch so far in this call
    cache: torch.Tensor | None = None
    sample_shape: tuple | None = None
    pattern: str = ""                # "F" full, "p" partial, per evaluation

    def reset(self) -> None:
        """Let go of the tensors; the counts stay for reporting."""
        self.key = self.cache = None


class BranchStates(StateManager):
    """The branches of one call: by diffusers' ``CacheContext`` name when one is set, else by the conditioning
    input (the same tensor object, or an equal one)."""

    def __init__(self, kind: type[BranchState] = BranchState) -> None:
        super().__init__(kind)

    def branch(self, key: Any) -> BranchState:
        if self._context is not None:
            return self.get_state()
        by_input = {name: st for name, st in self._state_cache.items() if isinstance(name, tuple)}
        for st in by_input.values():
            if st.key is key:
                return st
        if torch.is_tensor(key):
            for st in by_input.values():
                if (torch.is_tensor(st.key) and st.key.shape == key.shape and st.key.dtype == key.dtype
                        and st.key.device == key.device and torch.equal(st.key, key)):
                    st.key = key
                    return st
        st = self._state_cls(key=key)
        self._state_cache[("input", len(by_input))] = st  # a tuple: never a CacheContext name
        return st

    def states(self) -> list[BranchState]:
        return list(self._state_cache.values())

    def free(self) -> None:
        """Let go of every branch's tensors."""
        for st in self._state_cache.values():
            st.reset()

    def clear(self) -> None:
        """Forget every branch (a new call); a CacheContext set by the caller stays."""
        self._state_cache.clear()


class DeepCacheHook(ModelHook):
    """Replaces the U-Net's forward; full evaluations call the original forward unchanged."""

    _is_stateful = True

    def __init__(self, config: DeepCacheConfig, plan: BranchPlan, owns_registry: bool):
        super().__init__()
        self.config, self.plan = config, plan
        self.state_manager = BranchStates()  # found by diffusers' _set_cache_context: it is a StateManager
        self.in_call = False
        self.full_evals = self.partial_evals = 0  # of the current (or last) call
        self.peak_cache_bytes = 0
        self._scheduler = None
        self._full_set: set[int] | None = None
        self._signature: inspect.Signature | None = None
        self._owns_registry, self._owns_forward = owns_registry, True

    # diffusers ModelHook interface -------------------------------------------------------------------------
    def initialize_hook(self, module):
        self._signature = inspect.signature(module.forward)
        self._owns_forward = "forward" not in module.__dict__
        return module

    def reset_state(self, module):
        """diffusers' ``reset_stateful_hooks``: free the cache (the next evaluation of each branch runs in full)."""
        self.state_manager.free()
        return module

    def new_forward(self, module, *args, **kwargs):
        if not self.in_call:
            raise RuntimeError("deepcache: the U-Net was evaluated outside a denoising call; allowed: through a "
                               "pipeline given to deepcache.apply(pipe, config), or in `with deepcache_call(unet):`")
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        key = a.get("encoder_hidden_states")
        state = self.state_manager.branch(key if key is not None else a.get("class_labels"))
        i = state.index
        state.index += 1
        sample = a["sample"]
        shape = (tuple(sample.shape), sample.dtype, sample.device)
        if (not self._is_full(i, a["timestep"]) and state.cache is not None and state.sample_shape == shape
                and needs_full(module, a) is None):
            self.partial_evals += 1
            state.pattern += "p"
            return partial_forward(module, self.plan, a, state.cache)
        state.cache = None  # free the old feature before the full evaluation allocates
        box: list = []
        with capture(module, self.plan, box):
            out = self.fn_ref.original_forward(*args, **kwargs)
        state.cache, state.sample_shape = (box[-1] if box else None), shape
        self.full_evals += 1
        state.pattern += "F"
        self.peak_cache_bytes = max(self.peak_cache_bytes, self.cache_bytes())
        return out

    # call boundaries --------------------------------------------------------------------------------------
    def _start_call(self, scheduler) -> None:
        if self.in_call:
            raise RuntimeError("deepcache: a call is already running on this U-Net; allowed: one call at a time")
        self.state_manager.clear()
        self.full_evals = self.partial_evals = self.peak_cache_bytes = 0
        self._scheduler, self._full_set, self.in_call = scheduler, None, True

    def _end_call(self) -> None:
        self.state_manager.free()
        self._scheduler, self.in_call = None, False

    # the schedule -----------------------------------------------------------------------------------------
    def _is_full(self, i: int, timestep) -> bool:
        cfg = self.config
        if cfg.schedule == "uniform":
            return i % cfg.interval == 0
        if self._full_set is None:
            self._full_set = set(full_steps_for(cfg, self._total_evals(timestep)))
        return i in self._full_set

    def _total_evals(self, timestep) -> int:
        """U-Net evaluations per branch in this call: the scheduler's timesteps from the first one evaluated."""
        if self.config.schedule == "explicit":
            return 1 << 30
        ts = getattr(self._scheduler, "timesteps", None)
        if ts is None:
            raise ValueError("deepcache: the nonuniform schedule needs the call's number of U-Net evaluations; "
                             "allowed: a pipeline call, or `with deepcache_call(unet, scheduler):` after "
                             "scheduler.set_timesteps")
        ts = torch.as_tensor(ts).reshape(-1)
        t = torch.as_tensor(timestep).reshape(-1)[:1].to(ts.device, ts.dtype)
        hits = (ts == t).nonzero()
        return len(ts) - (int(hits[0, 0]) if len(hits) else 0)

    # reporting --------------------------------------------------------------------------------------------
    def cache_bytes(self) -> int:
        """Bytes the cache holds now (one tensor per conditioning branch; 0 once the call has ended)."""
        return sum(st.cache.numel() * st.cache.element_size() for st in self.state_manager.states()
                   if st.cache is not None)

    def stats(self) -> dict:
        """The current (or last) call: full and partial U-Net evaluations, the pattern of each branch, and the
        most bytes the cache held."""
        states = self.state_manager.states()
        return {"full": self.full_evals, "partial": self.partial_evals,
                "evals": self.full_evals + self.partial_evals, "branches": len(states),
                "patterns": [st.pattern for st in states], "cache_bytes": self.peak_cache_bytes}


def get_hook(pipe_or_unet) -> DeepCacheHook | None:
    """The DeepCache hook attached to a U-Net or transformer (or a pipeline's denoiser), or None."""
    unet = pipe_or_unet if isinstance(pipe_or_unet, torch.nn.Module) else next(
        (m for m in (getattr(pipe_or_unet, "unet", None), getattr(pipe_or_unet, "transformer", None))
         if m is not None), None)
    registry = getattr(unet, "_diffusers_hook", None)
    return registry.get_hook(DEEPCACHE_HOOK) if registry is not None else None


def apply_deepcache(unet: torch.nn.Module, config: DeepCacheConfig) -> DeepCacheHook:
    """Attach DeepCache to ``unet`` in place; applying again replaces the previous one (twice == once).

    ValueError on a diffusers version whose U-Net forward the partial evaluation does not mirror, a U-Net it does
    not support, or a branch outside the U-Net's range.
    """
    check_diffusers_version()
    config.validate()
    plan = plan_branch(unet, config.branch)
    remove_deepcache(unet)
    hook = DeepCacheHook(config, plan, owns_registry=not hasattr(unet, "_diffusers_hook"))
    HookRegistry.check_if_exists_or_initialize(unet).register_hook(hook, DEEPCACHE_HOOK)
    return hook


def remove_deepcache(unet: torch.nn.Module) -> None:
    """Detach DeepCache; the U-Net's forward is exactly the original again (no-op when not applied)."""
    hook = get_hook(unet)
    if hook is None:
        return
    hook._end_call()
    registry = unet._diffusers_hook
    registry.remove_hook(DEEPCACHE_HOOK, recurse=False)
    if not registry.hooks:
        if hook._owns_forward:
            unet.__dict__.pop("forward", None)  # back to the class's forward
        if hook._owns_registry:
            del unet._diffusers_hook


@contextlib.contextmanager
def deepcache_call(unet: torch.nn.Module, scheduler=None) -> Iterator[DeepCacheHook]:
    """One denoising call on a U-Net with DeepCache: every branch's schedule starts at evaluation 0 on entry, and
    the cache is freed on exit (also when the call raises). ``scheduler``: the call's scheduler, needed by the
    nonuniform schedule (its ``timesteps``, once set, give the number of evaluations)."""
    hook = get_hook(unet)
    if hook is None:
        raise ValueError(f"deepcache: {type(unet).__name__} has no DeepCache hook; call apply_deepcache(unet, "
                         "config) first")
    hook._start_call(scheduler)
    try:
        yield hook
    finally:
        hook._end_call()


def cached_tensors(unet: torch.nn.Module) -> int:
    """How many tensors DeepCache holds on ``unet`` now (cached features and branch keys; 0 between calls)."""
    hook = get_hook(unet)
    if hook is None:
        return 0
    return sum(torch.is_tensor(t) for st in hook.state_manager.states() for t in (st.cache, st.key))
