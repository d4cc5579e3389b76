"""DeepCache's partial U-Net evaluation: where a branch sits, the capture of the cached feature on a full
evaluation, and the shallow forward run on a partial one.

On a *full* evaluation the U-Net's original forward runs unchanged while :func:`capture` records one tensor:
the hidden state entering the up path at the branch. On a *partial* evaluation :func:`partial_forward` runs the
real diffusers modules itself, only the shallow part: time embedding, ``conv_in``, the down path up to the
branch, then the up path from the branch, fed with the cached tensor. That code mirrors
``UNet2DConditionModel.forward`` and ``UNet2DModel.forward`` of the diffusers versions in
:data:`MIRRORED_DIFFUSERS`; :func:`check_diffusers_version` refuses any other.

Branch ids mean what the public DeepCache package's ``cache_branch_id`` means: block ``b = branch // 3``,
layer ``l = branch % 3``. A partial evaluation computes down blocks ``0..b-1``, the first ``l`` layers of
down block ``b``, and the up block mirroring ``b`` from layer ``len(resnets) - 1 - l`` on, then every
shallower up block. SD 1.5: branch 0 runs only ``conv_in``, ``up_blocks[-1]`` layer 2 and ``conv_out``.
"""

from __future__ import annotations

import contextlib
import dataclasses

import diffusers
import torch
from diffusers.models.unets.unet_2d import UNet2DModel, UNet2DOutput
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel, UNet2DConditionOutput
from diffusers.utils.torch_utils import apply_freeu

MIRRORED_DIFFUSERS = ("0.42",)  # diffusers major.minor versions whose U-Net forwards the partial path mirrors
SUPPORTED_UNETS = (UNet2DConditionModel, UNet2DModel)
_DOWN_LAYERED = ("CrossAttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D")
_UP_LAYERED = ("CrossAttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D")


def check_diffusers_version() -> None:
    """ValueError unless the installed diffusers is one whose U-Net forward :func:`partial_forward` mirrors."""
    if ".".join(diffusers.__version__.split(".")[:2]) not in MIRRORED_DIFFUSERS:
        raise ValueError(f"deepcache: diffusers {diffusers.__version__} is not supported (its U-Net forward may "
                         f"differ from the one DeepCache's partial evaluation mirrors); allowed: diffusers "
                         f"{', '.join(v + '.x' for v in MIRRORED_DIFFUSERS)}")


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
    # Mirrors UNet2DConditionModel.forward (MIRRORED_DIFFUSERS) for the modules a partial evaluation runs.
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
    # Mirrors UNet2DModel.forward (MIRRORED_DIFFUSERS) for the modules a partial evaluation runs.
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

