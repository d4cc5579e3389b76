"""DeepCache's idea on a diffusion transformer (FORA / Δ-DiT): the first ``k`` and last ``m`` transformer blocks
run at every evaluation; on the evaluations between full ones the middle blocks are skipped and their cached
residual (output − input of the middle stack at the last full evaluation) is added to their input instead.

Same schedule, call boundaries and reporting as the U-Net hook (:class:`~backend.methods.deepcache.hook.DeepCacheHook`,
registered under the same name on the transformer, so ``get_hook`` / ``deepcache_call`` / ``eval_counts`` work on
either); the middle blocks carry a small hook each. The blocks' argument and return layout comes from diffusers'
``TransformerBlockRegistry`` (what its FirstBlockCache uses), so PixArt, SD3 and Flux blocks are all handled.

    apply_block_cache(transformer, DeepCacheConfig(interval=3, first_blocks=1, last_blocks=1))
    with deepcache_call(transformer, scheduler):
        ...
    remove_deepcache(transformer)
"""

from __future__ import annotations

import dataclasses

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks._helpers import TransformerBlockRegistry

from backend.metadata import DEEPCACHE_HOOK
from backend.methods.deepcache.config import DeepCacheConfig
from backend.methods.deepcache.hook import BranchState, BranchStates, DeepCacheHook, remove_deepcache

BLOCK_HOOK = "speedlab_deepcache_block"


@dataclasses.dataclass
class BlockPlan:
    """The transformer's blocks in call order and which of them are cached: ``range(first, len(blocks) - last)``."""

    blocks: list
    first: int
    last: int

    @property
    def middle(self) -> range:
        return range(self.first, len(self.blocks) - self.last)


@dataclasses.dataclass
class BlockState(BranchState):
    """One conditioning branch: ``cache`` holds the middle stack's residuals (hidden, encoder or None)."""

    block_in: tuple | None = None

    def reset(self) -> None:
        super().reset()
        self.block_in = None


def transformer_blocks(transformer: torch.nn.Module) -> list:
    """The blocks a transformer runs in order (Flux: its dual-stream blocks, then its single-stream blocks)."""
    blocks = [*getattr(transformer, "transformer_blocks", []), *getattr(transformer, "single_transformer_blocks", [])]
    if not blocks:
        raise ValueError(f"deepcache: {type(transformer).__name__} has no transformer_blocks; allowed: a PixArt, SD3 "
                         "or Flux transformer")
    for block in blocks:
        try:
            TransformerBlockRegistry.get(type(block))
        except ValueError:
            raise ValueError(f"deepcache: transformer block {type(block).__name__} has no diffusers block metadata; "
                             "allowed: PixArt, SD3 and Flux transformers") from None
    return blocks


def plan_blocks(transformer: torch.nn.Module, first: int, last: int) -> BlockPlan:
    """ValueError unless ``first + last`` leaves at least one block to cache."""
    blocks = transformer_blocks(transformer)
    if first + last >= len(blocks):
        raise ValueError(f"deepcache: first_blocks {first} + last_blocks {last} = {first + last} leaves no block to "
                         f"cache among the {len(blocks)} blocks of {type(transformer).__name__}; allowed: "
                         f"first_blocks + last_blocks ≤ {len(blocks) - 1}")
    return BlockPlan(blocks, first, last)


class BlockCacheHook(DeepCacheHook):
    """On the transformer: decides per evaluation whether it runs in full; the middle blocks' hooks read it."""

    def __init__(self, config: DeepCacheConfig, plan: BlockPlan, owns_registry: bool):
        super().__init__(config, plan, owns_registry)
        self.state_manager = BranchStates(BlockState)
        self.current: BlockState | None = None
        self.partial = False

    def new_forward(self, module, *args, **kwargs):
        if not self.in_call:
            raise RuntimeError("deepcache: the transformer was evaluated outside a denoising call; allowed: through a "
                               "pipeline given to deepcache.apply(pipe, config), or in `with deepcache_call(model):`")
        bound = self._signature.bind(*args, **kwargs)
        a = bound.arguments
        state = self.state_manager.branch(a.get("encoder_hidden_states"))
        i = state.index
        state.index += 1
        sample = a["hidden_states"]
        shape = (tuple(sample.shape), sample.dtype, sample.device)
        self.partial = (not self._is_full(i, a["timestep"]) and state.cache is not None
                        and state.sample_shape == shape)
        if not self.partial:
            state.cache = state.block_in = None
        self.current = state
        try:
            out = self.fn_ref.original_forward(*args, **kwargs)
        finally:
            self.current = None
        if self.partial:
            self.partial_evals += 1
            state.pattern += "p"
        else:
            state.sample_shape = shape
            self.full_evals += 1
            state.pattern += "F"
            self.peak_cache_bytes = max(self.peak_cache_bytes, self.cache_bytes())
        return out

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for st in self.state_manager.states() if st.cache is not None
                   for t in st.cache if t is not None)


class MiddleBlockHook(ModelHook):
    """On each middle block: at a full evaluation, record the stack's input (first) or residual (last); at a
    partial one, return input + residual (first) or pass the input through (the others)."""

    def __init__(self, owner: BlockCacheHook, position: int, count: int):
        super().__init__()
        self.owner, self.position, self.count = owner, position, count
        self.meta = None

    def initialize_hook(self, module):
        self.meta = TransformerBlockRegistry.get(type(module))
        return module

    def _inputs(self, args, kwargs) -> tuple:
        m = self.meta
        h = m._get_parameter_from_args_kwargs(m.hidden_states_argument_name, args, kwargs)
        e = None
        if m.return_encoder_hidden_states_index is not None:
            e = m._get_parameter_from_args_kwargs(m.encoder_hidden_states_argument_name, args, kwargs)
        return h, e

    def _pack(self, h, e):
        m = self.meta
        if m.return_encoder_hidden_states_index is None:
            return h
        out = [None, None]
        out[m.return_hidden_states_index], out[m.return_encoder_hidden_states_index] = h, e
        return tuple(out)

    def _outputs(self, out) -> tuple:
        m = self.meta
        if m.return_encoder_hidden_states_index is None:
            return (out if torch.is_tensor(out) else out[m.return_hidden_states_index]), None
        return out[m.return_hidden_states_index], out[m.return_encoder_hidden_states_index]

    def new_forward(self, module, *args, **kwargs):
        state = self.owner.current
        if state is None:  # not inside the transformer's hooked forward (a direct block call)
            return self.fn_ref.original_forward(*args, **kwargs)
        h, e = self._inputs(args, kwargs)
        if self.owner.partial:
            if self.position == 0:
                rh, re = state.cache
                return self._pack(h + rh, None if re is None or e is None else e + re)
            return self._pack(h, e)
        out = self.fn_ref.original_forward(*args, **kwargs)
        if self.position == 0:
            state.block_in = (h, e)
        if self.position == self.count - 1:
            oh, oe = self._outputs(out)
            ih, ie = state.block_in
            state.cache = (oh - ih, None if oe is None or ie is None else oe - ie)
            state.block_in = None
        return out


def apply_block_cache(transformer: torch.nn.Module, config: DeepCacheConfig) -> BlockCacheHook:
    """Attach block caching to ``transformer`` in place (twice == once); ValueError for a transformer without
    registered blocks or first_blocks + last_blocks that leaves nothing to cache."""
    config.validate()
    plan = plan_blocks(transformer, config.first_blocks, config.last_blocks)
    remove_block_cache(transformer)
    hook = BlockCacheHook(config, plan, owns_registry=not hasattr(transformer, "_diffusers_hook"))
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(hook, DEEPCACHE_HOOK)
    middle = list(plan.middle)
    for pos, j in enumerate(middle):
        HookRegistry.check_if_exists_or_initialize(plan.blocks[j]).register_hook(
            MiddleBlockHook(hook, pos, len(middle)), BLOCK_HOOK)
    return hook


def remove_block_cache(transformer: torch.nn.Module) -> None:
    """Detach block caching: every block's and the transformer's original forward (no-op when not applied)."""
    for block in transformer_blocks(transformer):
        registry = getattr(block, "_diffusers_hook", None)
        if registry is not None and registry.get_hook(BLOCK_HOOK) is not None:
            registry.remove_hook(BLOCK_HOOK, recurse=False)
            if not registry.hooks:
                block.__dict__.pop("forward", None)
                del block._diffusers_hook
    remove_deepcache(transformer)
