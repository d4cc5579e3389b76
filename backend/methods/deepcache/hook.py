"""The DeepCache mechanism: a forward replacement of the U-Net that owns its state.

Attached through diffusers' own hook registry (``diffusers.hooks.HookRegistry``, the way diffusers'
cache hooks attach to transformers). On a *full* evaluation the hook calls the U-Net's original forward
unchanged and records one tensor: the hidden state entering the up path at the branch. On a *partial*
evaluation it runs the real diffusers modules itself, only the shallow part: time embedding, ``conv_in``,
the down path up to the branch, then the up path from the branch, fed with the cached tensor.

Branch ids mean what the public DeepCache package's ``cache_branch_id`` means: block ``b = branch // 3``,
layer ``l = branch % 3``. A partial evaluation computes down blocks ``0..b-1``, the first ``l`` layers of
down block ``b``, and the up block mirroring ``b`` from layer ``len(resnets) - 1 - l`` on, then every
shallower up block. SD 1.5: branch 0 runs only ``conv_in``, ``up_blocks[-1]`` layer 2 and ``conv_out``.

State (reset at the start of every pipeline call): one branch state per conditioning input, so batched
CFG holds one cache (both halves in one tensor) and CFG done as two U-Net calls per step holds two; each
counts its own U-Net evaluations from 0, so img2img, a different step count, Heun's two evaluations per
step and PLMS's extra one all follow the schedule. A new call is recognised by the pipeline's scheduler
having new ``timesteps`` (``set_timesteps`` runs at the start of every diffusers pipeline call), or, when
there is no scheduler to look at, by the timestep going up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import weakref
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.unets.unet_2d import UNet2DModel, UNet2DOutput
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel, UNet2DConditionOutput
from diffusers.utils.torch_utils import apply_freeu

from backend.methods.deepcache.config import DeepCacheConfig
from backend.methods.deepcache.schedule import full_steps_for

HOOK_NAME = "speedlab_deepcache"
SUPPORTED_UNETS = (UNet2DConditionModel, UNet2DModel)
_DOWN_LAYERED = ("CrossAttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D")
_UP_LAYERED = ("CrossAttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D")


# ----------------------------------------------------------------------------------------------------------
# Where a branch sits in a given U-Net
# ----------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BranchPlan:
    """Branch ``branch`` of a U-Net: block/layer on the down path, the mirrored up block and layer."""

    branch: int
    block: int        # down block b; layers 0..layer-1 of it are computed on a partial evaluation
    layer: int
    up_block: int     # up block index u = n_up - 1 - b
    up_layer: int     # the first computed layer j0 of up block u; the cache is the state entering it
    n_skips: int      # skip tensors computed on a partial evaluation (conv_in's included)


def _check_supported(unet: torch.nn.Module) -> None:
    if not isinstance(unet, SUPPORTED_UNETS):
        raise ValueError(f"deepcache: {type(unet).__name__} is not supported; allowed: UNet2DConditionModel "
                         "(SD 1.x/2.x/SDXL, shapes-sd) or UNet2DModel (DDPM-style)")
    if any(hasattr(b, "skip_conv") for b in (*unet.down_blocks, *unet.up_blocks)):
        raise ValueError("deepcache: U-Nets with Skip* blocks (a skip_sample path) are not supported")


def _down_outputs(block: torch.nn.Module) -> int:
    return len(block.resnets) + (1 if getattr(block, "downsamplers", None) is not None else 0)


def _plan_or_none(unet: torch.nn.Module, branch: int) -> BranchPlan | None:
    b, layer = branch // 3, branch % 3
    n = len(unet.down_blocks)
    if b >= n or len(unet.up_blocks) != n:
        return None
    down, u = unet.down_blocks[b], n - 1 - b
    up = unet.up_blocks[u]
    if layer > len(down.resnets) or layer >= len(up.resnets):
        return None
    if layer > 0 and type(down).__name__ not in _DOWN_LAYERED:
        return None
    if type(up).__name__ not in _UP_LAYERED:
        return None
    j0 = len(up.resnets) - 1 - layer
    n_skips = 1 + sum(_down_outputs(d) for d in unet.down_blocks[:b]) + layer
    consumed = (layer + 1) + sum(len(x.resnets) for x in unet.up_blocks[u + 1:])
    if n_skips != consumed:
        return None
    return BranchPlan(branch, b, layer, u, j0, n_skips)


def valid_branches(unet: torch.nn.Module) -> list[int]:
    """Branch ids that mean something for this U-Net (SD 1.5: 0-11, SDXL: 0-8)."""
    _check_supported(unet)
    return [br for br in range(3 * len(unet.down_blocks)) if _plan_or_none(unet, br) is not None]


def _describe(ids: list[int]) -> str:
    if not ids:
        return "none"
    if ids == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]} to {ids[-1]}"
    return ", ".join(map(str, ids))


def plan_branch(unet: torch.nn.Module, branch: int) -> BranchPlan:
    """The plan of ``branch`` for this U-Net; ValueError naming the valid range otherwise."""
    _check_supported(unet)
    plan = _plan_or_none(unet, branch) if isinstance(branch, int) and branch >= 0 else None
    if plan is None:
        raise ValueError(f"deepcache.branch: {branch!r} is out of range for this {type(unet).__name__} "
                         f"({len(unet.down_blocks)} down blocks); allowed: {_describe(valid_branches(unet))}")
    return plan


# ----------------------------------------------------------------------------------------------------------
# The shallow (partial) evaluation and the capture of the cached feature on full evaluations
# ----------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def capture(unet: torch.nn.Module, plan: BranchPlan, box: list):
    """While active, append a copy of the hidden state entering up block u at layer j0 to ``box``."""
    up = unet.up_blocks[plan.up_block]
    if plan.up_layer == 0:
        def pre(module, args, kwargs):
            h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            box.append(h.detach().clone())  # clone: FreeU scales this tensor in place
        handle = up.register_forward_pre_hook(pre, with_kwargs=True)
    else:
        attentions = getattr(up, "attentions", None)
        target = attentions[plan.up_layer - 1] if attentions else up.resnets[plan.up_layer - 1]

        def post(module, args, out):
            h = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
            box.append(h.detach().clone())
        handle = target.register_forward_hook(post)
    try:
        yield box
    finally:
        handle.remove()


def _down_layers(block, hidden, temb, n_layers, ctx):
    """The first ``n_layers`` (resnet, attention) layers of a down block, as the block's forward runs them."""
    kind = type(block).__name__
    out = []
    for i in range(n_layers):
        hidden = block.resnets[i](hidden, temb)
        if kind == "CrossAttnDownBlock2D":
            hidden = block.attentions[i](hidden, return_dict=False, **ctx)[0]
        elif kind == "AttnDownBlock2D":
            hidden = block.attentions[i](hidden)
        out.append(hidden)
    return out


def _up_layers(block, hidden, res_tuple, temb, j0, upsample_size, ctx):
    """Layers j0.. of an up block and its upsampler, as the block's forward runs them."""
    kind = type(block).__name__
    freeu = kind != "AttnUpBlock2D" and (getattr(block, "s1", None) and getattr(block, "s2", None)
                                          and getattr(block, "b1", None) and getattr(block, "b2", None))
    if freeu:
        hidden = hidden.clone()  # apply_freeu scales in place; keep the cache intact
    for j in range(j0, len(block.resnets)):
        res = res_tuple[-1]
        res_tuple = res_tuple[:-1]
        if freeu:
            hidden, res = apply_freeu(block.resolution_idx, hidden, res, s1=block.s1, s2=block.s2, b1=block.b1,
                                      b2=block.b2)
        hidden = torch.cat([hidden, res], dim=1)
        hidden = block.resnets[j](hidden, temb)
        if kind == "CrossAttnUpBlock2D":
            hidden = block.attentions[j](hidden, return_dict=False, **ctx)[0]
        elif kind == "AttnUpBlock2D":
            hidden = block.attentions[j](hidden)
    if block.upsamplers is not None:
        for upsampler in block.upsamplers:
            if kind == "AttnUpBlock2D":
                hidden = upsampler(hidden, temb=temb) if block.upsample_type == "resnet" else upsampler(hidden)
            else:
                hidden = upsampler(hidden, upsample_size)
    return hidden


def needs_full(unet: torch.nn.Module, a: dict) -> str | None:
    """Why this evaluation cannot be partial (inputs the shallow path does not model), or None."""
    if isinstance(unet, UNet2DConditionModel):
        if a.get("down_intrablock_additional_residuals") is not None:
            return "T2I-Adapter residuals"
        if a.get("mid_block_additional_residual") is None and a.get("down_block_additional_residuals") is not None:
            return "T2I-Adapter residuals"
        cak = a.get("cross_attention_kwargs")
        if cak is not None and cak.get("gligen") is not None:
            return "GLIGEN"
        if unet.config.addition_embed_type == "image_hint":
            return "image_hint embeddings"
    return None


def partial_forward(unet: torch.nn.Module, plan: BranchPlan, a: dict, cache: torch.Tensor):
    """One partial evaluation with bound forward arguments ``a``; returns what the original forward returns."""
    if isinstance(unet, UNet2DConditionModel):
        sample = _partial_condition(unet, plan, a, cache)
        return UNet2DConditionOutput(sample=sample) if a.get("return_dict", True) else (sample,)
    sample = _partial_unconditional(unet, plan, a, cache)
    return UNet2DOutput(sample=sample) if a.get("return_dict", True) else (sample,)


def _partial_condition(unet: UNet2DConditionModel, plan: BranchPlan, a: dict, cache: torch.Tensor) -> torch.Tensor:
    # Mirrors UNet2DConditionModel.forward (diffusers 0.42.1) for the modules a partial evaluation runs.
    sample, timestep = a["sample"], a["timestep"]
    encoder_hidden_states = a["encoder_hidden_states"]
    attention_mask, encoder_attention_mask = a.get("attention_mask"), a.get("encoder_attention_mask")
    cross_attention_kwargs, added_cond_kwargs = a.get("cross_attention_kwargs"), a.get("added_cond_kwargs")

    forward_upsample_size = any(dim % (2 ** unet.num_upsamplers) != 0 for dim in sample.shape[-2:])
    if attention_mask is not None:
        attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
    if encoder_attention_mask is not None:
        encoder_attention_mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0

    t_emb = unet.get_time_embed(sample=sample, timestep=timestep)
    emb = unet.time_embedding(t_emb, a.get("timestep_cond"))
    class_emb = unet.get_class_embed(sample=sample, class_labels=a.get("class_labels"))
    if class_emb is not None:
        emb = torch.cat([emb, class_emb], dim=-1) if unet.config.class_embeddings_concat else emb + class_emb
    aug_emb = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                                 added_cond_kwargs=added_cond_kwargs)
    emb = emb + aug_emb if aug_emb is not None else emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    encoder_hidden_states = unet.process_encoder_hidden_states(
        encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs)

    sample = unet.conv_in(sample)
    ctx = dict(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
               cross_attention_kwargs=cross_attention_kwargs, encoder_attention_mask=encoder_attention_mask)
    skips = [sample]
    for block in unet.down_blocks[:plan.block]:
        if getattr(block, "has_cross_attention", False):
            sample, res = block(hidden_states=sample, temb=emb, **ctx)
        else:
            sample, res = block(hidden_states=sample, temb=emb)
        skips.extend(res)
    if plan.layer:
        skips.extend(_down_layers(unet.down_blocks[plan.block], sample, emb, plan.layer, ctx))

    down_residuals, mid_residual = a.get("down_block_additional_residuals"), a.get("mid_block_additional_residual")
    if mid_residual is not None and down_residuals is not None:  # ControlNet: residuals of the computed skips
        skips = [s + r for s, r in zip(skips, down_residuals, strict=False)]

    hidden, upsample_size = cache, None
    n_up = len(unet.up_blocks)
    for i in range(plan.up_block, n_up):
        block = unet.up_blocks[i]
        n = len(block.resnets) - (plan.up_layer if i == plan.up_block else 0)
        res, skips = tuple(skips[-n:]), skips[:-n]
        if i != n_up - 1 and forward_upsample_size:
            upsample_size = skips[-1].shape[2:]
        if i == plan.up_block:
            hidden = _up_layers(block, hidden, res, emb, plan.up_layer, upsample_size, ctx)
        elif getattr(block, "has_cross_attention", False):
            hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res,
                           upsample_size=upsample_size, **ctx)
        else:
            hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size)

    if unet.conv_norm_out:
        hidden = unet.conv_norm_out(hidden)
        hidden = unet.conv_act(hidden)
    return unet.conv_out(hidden)


def _partial_unconditional(unet: UNet2DModel, plan: BranchPlan, a: dict, cache: torch.Tensor) -> torch.Tensor:
    # Mirrors UNet2DModel.forward (diffusers 0.42.1) for the modules a partial evaluation runs.
    sample, timesteps, class_labels = a["sample"], a["timestep"], a.get("class_labels")
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    if not torch.is_tensor(timesteps):
        timesteps = torch.tensor([timesteps], dtype=torch.long, device=sample.device)
    elif torch.is_tensor(timesteps) and len(timesteps.shape) == 0:
        timesteps = timesteps[None].to(sample.device)
    timesteps = timesteps * torch.ones(sample.shape[0], dtype=timesteps.dtype, device=timesteps.device)
    t_emb = unet.time_proj(timesteps).to(dtype=unet.dtype)
    emb = unet.time_embedding(t_emb)
    if unet.class_embedding is not None:
        if class_labels is None:
            raise ValueError("class_labels should be provided when doing class conditioning")
        if unet.config.class_embed_type == "timestep":
            class_labels = unet.time_proj(class_labels)
        emb = emb + unet.class_embedding(class_labels).to(dtype=unet.dtype)
    elif class_labels is not None:
        raise ValueError("class_embedding needs to be initialized in order to use class conditioning")

    sample = unet.conv_in(sample)
    skips = [sample]
    for block in unet.down_blocks[:plan.block]:
        sample, res = block(hidden_states=sample, temb=emb)
        skips.extend(res)
    if plan.layer:
        skips.extend(_down_layers(unet.down_blocks[plan.block], sample, emb, plan.layer, {}))

    hidden = cache
    for i in range(plan.up_block, len(unet.up_blocks)):
        block = unet.up_blocks[i]
        n = len(block.resnets) - (plan.up_layer if i == plan.up_block else 0)
        res, skips = tuple(skips[-n:]), skips[:-n]
        if i == plan.up_block:
            hidden = _up_layers(block, hidden, res, emb, plan.up_layer, None, {})
        else:
            hidden = block(hidden, res, emb)

    hidden = unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))
    if unet.config.time_embedding_type == "fourier":
        hidden = hidden / timesteps.reshape((hidden.shape[0], *([1] * len(hidden.shape[1:]))))
    return hidden


# ----------------------------------------------------------------------------------------------------------
# The hook: per-call state, one cache per conditioning branch
# ----------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class BranchState:
    """One CFG branch (one conditioning input) of the current call."""

    cond: Any = None                 # the conditioning tensor that identifies the branch
    index: int = 0                   # U-Net evaluations of this branch so far in this call
    cache: torch.Tensor | None = None
    sample_shape: tuple | None = None
    pattern: str = ""


class DeepCacheHook(ModelHook):
    """Replaces the U-Net's forward; full evaluations call the original forward unchanged."""

    _is_stateful = True

    def __init__(self, config: DeepCacheConfig, plan: BranchPlan, pipe=None):
        super().__init__()
        self.config, self.plan = config, plan
        self._pipe = weakref.ref(pipe) if pipe is not None else None
        self._signature: inspect.Signature | None = None
        self._context: str | None = None
        self.calls = 0
        self._reset()

    # diffusers ModelHook interface -------------------------------------------------------------------------
    def initialize_hook(self, module):
        self._signature = inspect.signature(module.forward)
        return module

    def reset_state(self, module):
        self._reset()
        return module

    def new_forward(self, module, *args, **kwargs):
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        self._maybe_new_call(a["timestep"])
        state = self._branch_state(a)
        i = state.index
        state.index += 1
        sample = a["sample"]
        shape = (tuple(sample.shape), sample.dtype, sample.device)
        partial = (
            not self._is_full(i, a["timestep"])
            and state.cache is not None
            and state.sample_shape == shape
            and needs_full(module, a) is None
        )
        if partial:
            out = partial_forward(module, self.plan, a, state.cache)
            self.partial_evals += 1
            state.pattern += "p"
            return out
        state.cache = None  # free the old feature before the full evaluation allocates
        box: list = []
        with capture(module, self.plan, box):
            out = self.fn_ref.original_forward(*args, **kwargs)
        state.cache = box[-1] if box else None
        state.sample_shape = shape
        self.full_evals += 1
        state.pattern += "F"
        return out

    # state ------------------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.branches: list[BranchState] = []
        self.full_evals = 0
        self.partial_evals = 0
        self._full_set: set[int] | None = None
        self._seen_timesteps = None
        self._last_t: float | None = None
        self._in_call = False

    def reset(self) -> None:
        """Forget the cache and counters (the next evaluation starts a new call)."""
        self._reset()

    def _scheduler_timesteps(self):
        pipe = self._pipe() if self._pipe is not None else None
        scheduler = getattr(pipe, "scheduler", None)
        return getattr(scheduler, "timesteps", None)

    def _maybe_new_call(self, timestep) -> None:
        ts = self._scheduler_timesteps()
        if ts is not None:
            if ts is not self._seen_timesteps:
                self._start_call()
                self._seen_timesteps = ts
            return
        # no scheduler to look at: the timestep going up marks a new call (only read where it costs no sync)
        t = None
        if isinstance(timestep, (int, float)):
            t = float(timestep)
        elif torch.is_tensor(timestep) and timestep.device.type == "cpu":
            t = float(timestep.reshape(-1)[0])
        if not self._in_call or (t is not None and self._last_t is not None and t > self._last_t):
            self._start_call()
        if t is not None:
            self._last_t = t

    def _start_call(self) -> None:
        self._reset()
        self._in_call = True
        self.calls += 1

    def _branch_state(self, a: dict) -> BranchState:
        if self._context is not None:
            cond = self._context
        else:
            cond = a.get("encoder_hidden_states")
            if cond is None:
                cond = a.get("class_labels")
        for st in self.branches:
            if st.cond is cond:
                return st
        if torch.is_tensor(cond):
            for st in self.branches:
                if (torch.is_tensor(st.cond) and st.cond.shape == cond.shape and st.cond.dtype == cond.dtype
                        and st.cond.device == cond.device and torch.equal(st.cond, cond)):
                    st.cond = cond
                    return st
        st = BranchState(cond=cond)
        self.branches.append(st)
        return st

    def _is_full(self, i: int, timestep) -> bool:
        cfg = self.config
        if cfg.schedule == "uniform":
            return i % cfg.interval == 0
        if self._full_set is None:
            self._full_set = set(full_steps_for(cfg, self._total_evals(timestep)))
        return i in self._full_set

    def _total_evals(self, timestep) -> int:
        """U-Net evaluations per branch in this call: the scheduler's timesteps from the first one seen."""
        ts = self._scheduler_timesteps()
        if ts is None:
            if self.config.schedule == "explicit":
                return 1 << 30
            raise ValueError("deepcache: the nonuniform schedule needs the pipeline's scheduler to know the number "
                             "of steps; apply DeepCache to a pipeline, not a bare U-Net")
        ts = torch.as_tensor(ts).reshape(-1)
        t = torch.as_tensor(timestep).reshape(-1)[:1].to(ts.device, ts.dtype)
        hits = (ts == t).nonzero()
        first = int(hits[0, 0]) if len(hits) else 0
        return len(ts) - first

    # reporting --------------------------------------------------------------------------------------------
    def cache_bytes(self) -> int:
        """Bytes held by the cache now (one tensor per conditioning branch)."""
        return sum(st.cache.numel() * st.cache.element_size() for st in self.branches if st.cache is not None)

    def stats(self) -> dict:
        """Counts of the current (or last) call: full and partial U-Net evaluations, pattern per branch."""
        return {"full": self.full_evals, "partial": self.partial_evals,
                "evals": self.full_evals + self.partial_evals, "branches": len(self.branches),
                "patterns": [st.pattern for st in self.branches], "cache_bytes": self.cache_bytes()}

    @contextlib.contextmanager
    def context(self, name: str):
        """Name the CFG branch explicitly for U-Net calls inside the block (overrides automatic keying)."""
        previous, self._context = self._context, name
        try:
            yield
        finally:
            self._context = previous


# ----------------------------------------------------------------------------------------------------------
# apply / remove
# ----------------------------------------------------------------------------------------------------------

def _unet_of(pipe) -> torch.nn.Module:
    unet = getattr(pipe, "unet", None)
    if unet is None:
        other = "a transformer (DiT)" if getattr(pipe, "transformer", None) is not None else "no U-Net"
        raise ValueError(f"deepcache: pipeline {type(pipe).__name__} has {other}; DeepCache needs a U-Net pipeline "
                         "(UNet2DConditionModel or UNet2DModel)")
    return unet


def get_hook(pipe_or_unet) -> DeepCacheHook | None:
    """The DeepCache hook attached to a pipeline's U-Net (or a U-Net), or None."""
    unet = pipe_or_unet if isinstance(pipe_or_unet, torch.nn.Module) else getattr(pipe_or_unet, "unet", None)
    registry = getattr(unet, "_diffusers_hook", None)
    return registry.get_hook(HOOK_NAME) if registry is not None else None


def apply(pipe, config: DeepCacheConfig | dict | None = None) -> DeepCacheHook:
    """Attach DeepCache to ``pipe.unet`` in place. Applying again replaces the previous one (twice == once)."""
    if config is None or isinstance(config, dict):
        config = DeepCacheConfig.from_dict(config)
    config.validate()
    unet = _unet_of(pipe)
    plan = plan_branch(unet, config.branch)
    remove(pipe)
    had_forward = "forward" in unet.__dict__
    had_registry = hasattr(unet, "_diffusers_hook")
    hook = DeepCacheHook(config, plan, pipe)
    hook._restore = (had_forward, had_registry)
    HookRegistry.check_if_exists_or_initialize(unet).register_hook(hook, HOOK_NAME)
    return hook


def remove(pipe) -> None:
    """Detach DeepCache; the U-Net's forward is the original again (no-op when not applied)."""
    unet = pipe if isinstance(pipe, torch.nn.Module) else getattr(pipe, "unet", None)
    hook = get_hook(unet) if unet is not None else None
    if hook is None:
        return
    registry = unet._diffusers_hook
    registry.remove_hook(HOOK_NAME, recurse=False)
    had_forward, had_registry = getattr(hook, "_restore", (True, True))
    if not had_forward and not registry.hooks:
        unet.__dict__.pop("forward", None)  # back to the class's forward, exactly as before
    if not had_registry and not registry.hooks:
        del unet._diffusers_hook
    hook.reset()


def reset(pipe) -> None:
    """Drop the cache and counters now (they are reset at the start of every pipeline call anyway)."""
    hook = get_hook(pipe)
    if hook is not None:
        hook.reset()
