"""What DeepCache saves, counted on the actual model: MACs of a full and of a partial U-Net evaluation,
the theoretical speedup of a schedule, the full/partial evaluations of a call, the cache's size.

MACs are counted with torch's FlopCounterMode (1 MAC = 2 FLOPs; convolutions, matmuls and attention)
while the real U-Net modules run on fake tensors (``FakeTensorMode``), so counting costs no compute even
for SD-size models; a U-Net on the meta device is run directly.
"""

from __future__ import annotations

import contextlib
import math

import torch

from backend.methods.deepcache.config import DeepCacheConfig
from backend.methods.deepcache.hook import get_hook
from backend.methods.deepcache.partial import BranchPlan, capture, partial_forward, plan_branch
from backend.methods.deepcache.schedule import full_steps_for
from backend.metrics.cost import mac_counter


def _fake_mode(unet: torch.nn.Module):
    if next(unet.parameters()).device.type == "meta":
        return contextlib.nullcontext()
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


def example_inputs(unet: torch.nn.Module, batch: int = 1, latent_height: int | None = None,
                   latent_width: int | None = None, seq_len: int = 77) -> dict:
    """Keyword arguments of one U-Net evaluation of these shapes (values are random; only shapes matter)."""
    p = next(unet.parameters())
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    h, w = latent_height or size, latent_width or size
    kw = {"sample": torch.randn(batch, cfg.in_channels, h, w, device=p.device, dtype=p.dtype),
          "timestep": torch.tensor(500, device=p.device)}
    if hasattr(cfg, "cross_attention_dim"):
        dim = cfg.cross_attention_dim
        dim = dim[0] if isinstance(dim, (list, tuple)) else dim
        kw["encoder_hidden_states"] = torch.randn(batch, seq_len, dim, device=p.device, dtype=p.dtype)
        if getattr(cfg, "addition_embed_type", None) == "text_time":
            n_time = 6
            text_dim = cfg.projection_class_embeddings_input_dim - n_time * cfg.addition_time_embed_dim
            kw["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, text_dim, device=p.device, dtype=p.dtype),
                                       "time_ids": torch.randn(batch, n_time, device=p.device, dtype=p.dtype)}
    if getattr(cfg, "num_class_embeds", None):
        kw["class_labels"] = torch.zeros(batch, dtype=torch.long, device=p.device)
    return kw


def _original_forward(unet: torch.nn.Module):
    hook = get_hook(unet)
    return hook.fn_ref.original_forward if hook is not None else unet.forward


def _bound(unet: torch.nn.Module, kwargs: dict) -> dict:
    import inspect

    bound = inspect.signature(type(unet).forward).bind(unet, **kwargs)
    bound.apply_defaults()
    args = dict(bound.arguments)
    args.pop("self", None)
    return args


def unet_macs(unet: torch.nn.Module, branch: int | BranchPlan, batch: int = 1, latent_height: int | None = None,
              latent_width: int | None = None, seq_len: int = 77) -> dict:
    """MACs of one full and one partial evaluation of ``unet`` at this batch and latent size, and the
    bytes of the cached feature: {"full": int, "partial": int, "cache_bytes": int}."""
    plan = branch if isinstance(branch, BranchPlan) else plan_branch(unet, branch)
    forward = _original_forward(unet)
    with torch.inference_mode(), _fake_mode(unet):
        kwargs = example_inputs(unet, batch, latent_height, latent_width, seq_len)
        box: list = []
        with mac_counter() as counter, capture(unet, plan, box):
            forward(**kwargs)
        full = counter.get_total_flops() // 2
        cache = box[-1]
        with mac_counter() as counter:
            partial_forward(unet, plan, _bound(unet, kwargs), cache)
        partial = counter.get_total_flops() // 2
        cache_bytes = cache.numel() * cache.element_size()
    return {"full": int(full), "partial": int(partial), "cache_bytes": int(cache_bytes)}


def schedule_counts(config: DeepCacheConfig, total: int) -> dict:
    """Full and partial evaluations of a call with ``total`` U-Net evaluations (per CFG branch)."""
    full = len(full_steps_for(config, total))
    return {"full": full, "partial": total - full, "evals": total}


def schedule_macs(config: DeepCacheConfig, total: int, macs: dict) -> int:
    """MACs of all U-Net evaluations of a call under the schedule (``macs`` from :func:`unet_macs`)."""
    c = schedule_counts(config, total)
    return c["full"] * macs["full"] + c["partial"] * macs["partial"]


def theoretical_speedup(config: DeepCacheConfig, total: int, macs: dict) -> float:
    """T * C_full / (k * C_full + (T - k) * C_partial): the U-Net MACs ratio against no DeepCache."""
    return total * macs["full"] / schedule_macs(config, total, macs)


def uniform_speedup(total: int, interval: int, partial_fraction: float) -> float:
    """The same for a uniform schedule, from the partial evaluation's share of a full one."""
    k = math.ceil(total / interval)
    return total / (k + (total - k) * partial_fraction)


def eval_counts(pipe) -> dict:
    """Full and partial U-Net evaluations of the pipeline's current (or last) call; the most bytes the cache held."""
    hook = get_hook(pipe)
    if hook is None:
        return {"full": None, "partial": None, "evals": None, "branches": 0, "patterns": [], "cache_bytes": 0}
    return hook.stats()
