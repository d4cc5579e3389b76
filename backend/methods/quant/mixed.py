"""Mixed precision under a size budget: ``"quant": {"mixed": {"budget_mb": X}}``.

Start from the layer policy at the target bits (the smallest packed U-Net it allows), rank the layers below
8 bits by the sensitivity map (:mod:`backend.methods.quant.sensitivity`, most sensitive first) and raise each in
turn to W8A8 when its extra packed bytes still fit in the budget (a layer too large to fit is skipped, the next
is tried). Activation bits do not change the size; a raised layer gets 8-bit activations too.
"""

from __future__ import annotations

import copy
import dataclasses

from torch import nn

from backend.methods.quant.config import QuantConfig
from backend.methods.quant.model import QuantState, _set_module, quantize_unet


def packed_weight_mb(numel: int, bits: int) -> float:
    """Packed bytes of ``numel`` weight codes at ``bits`` (as the checkpoint packs them), in MiB."""
    from backend.methods.quant.checkpoint import _per_byte

    return -(-numel // _per_byte(bits)) / 2**20


def smallest_size_mb(pipe, config: QuantConfig) -> float:
    """The packed U-Net size with every layer at the policy's bits (no layer raised)."""
    from backend.methods.quant import packed_size_mb
    from backend.models import denoiser

    probe = copy.deepcopy(denoiser(pipe))
    quantize_unet(probe, dataclasses.replace(config, mixed={}))
    return packed_size_mb(probe)


def plan(pipe, config: QuantConfig, samples: int = 4) -> tuple[list[str], float]:
    """(layers to raise to W8A8, the packed size in MiB they give) for ``config.mixed["budget_mb"]``;
    ValueError when the budget is below the smallest size the policy allows."""
    from backend.methods.quant.sensitivity import sensitivity_map

    budget = float(config.mixed["budget_mb"])
    size = smallest_size_mb(pipe, config)
    if budget < size:
        raise ValueError(f"quant.mixed.budget_mb {budget:g} is below the smallest packed size of this U-Net at "
                         f"W{config.weight_bits}A{config.act_bits} under this layer policy ({size:.3f} MiB, every "
                         f"layer at its policy bits); allowed: ≥ {size:.3f}")
    rows = sensitivity_map(pipe, config, samples=samples, seed=config.seed)
    chosen = []
    for row in sorted(rows, key=lambda r: -r["eps_rel_mse"]):
        if row["weight_bits"] == 8 and row["act_bits"] == 8:
            continue
        extra = packed_weight_mb(row["params"], 8) - packed_weight_mb(row["params"], row["weight_bits"])
        if size + extra <= budget:
            chosen.append(row["layer"])
            size += extra
    return chosen, size


def promote(unet: nn.Module, state: QuantState, names: list[str]) -> None:
    """Re-wrap the named quantized layers at W8A8 (same role and timestep index), in place."""
    from backend.methods.quant.layers import wrap_layer

    symmetric = state.config.symmetric_8bit_weights
    for name in names:
        old = state.layers[name]
        new = wrap_layer(old.base_layer, 8, 8, old.a_quant.index, old.role, symmetric)
        _set_module(unet, name, new)
        state.layers[name] = new
