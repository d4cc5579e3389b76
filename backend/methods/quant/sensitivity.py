"""Per-layer sensitivity map: how much the U-Net's output moves when only one layer is quantized.

The FP model samples a few prompts (DDIM); one (x_t, t, text) input per prompt is kept, spread over the
trajectory. A quantized copy of the U-Net is calibrated as PTQ would be, then every quantized layer in turn is
switched on alone (its weights and input activations at the policy's bits, all others FP) and the guided noise
prediction on those inputs is compared with the FP one: ``eps_mse`` and ``eps_rel_mse`` (over the FP
prediction's mean square), with ``eps_rel_mse_ci``: the bootstrap 95% interval over the inputs.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch

from backend.methods.quant.config import QuantConfig
from backend.metrics.paired import bootstrap_interval

ALL_LAYERS = {"first_last_8bit": False, "quantize_skip": "same", "quantize_downsample": "same"}


def target_config(weight_bits: int, act_bits: int, **overrides) -> QuantConfig:
    """Every Conv2d / Linear of the U-Net at the target bits (the map's default policy)."""
    return QuantConfig.from_dict({"weight_bits": weight_bits, "act_bits": act_bits, **ALL_LAYERS, **overrides})


@torch.no_grad()
def fixed_inputs(pipe, samples: int = 4, steps: int = 10, seed: int = 0) -> list[tuple]:
    """``samples`` U-Net inputs (x_t, t, cond, uncond) from the FP model's DDIM trajectories, one per prompt,
    at steps spread from the first to the last."""
    from backend.methods.quant.calibrate import collect_unet_inputs, default_prompts, guidance_of

    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples {samples!r} is out of range; allowed: a whole number ≥ 1")
    prompts = default_prompts(pipe, samples, seed)
    traj = collect_unet_inputs(pipe, prompts, steps, guidance_of(pipe), seed)
    out = []
    for i in range(samples):
        x, t, cond, uncond = traj[i * (len(traj) - 1) // max(1, samples - 1)]
        out.append((x[i:i + 1], t, cond[i:i + 1], uncond[i:i + 1]))
    return out


@torch.no_grad()
def sensitivity_map(pipe, config: QuantConfig, samples: int = 4, steps: int = 10, seed: int = 0) -> list[dict]:
    """One row per layer the policy quantizes (Conv2d / Linear; on a DiT its Linear layers), in model order: layer,
    role, weight_bits, act_bits, params, eps_mse, eps_rel_mse (the output change vs FP with only that layer quantized)
    and eps_rel_mse_ci."""
    from backend.methods.quant.calibrate import (
        calibrate,
        cfg_eps,
        collect_pipeline_calls,
        default_prompts,
        guidance_of,
    )
    from backend.methods.quant.model import quantize_unet
    from backend.models import denoiser, is_dit

    config = dataclasses.replace(config, mixed={}, checkpoint="", method="ptq")
    guidance = guidance_of(pipe)
    unet = copy.deepcopy(denoiser(pipe)).eval()
    if is_dit(pipe):  # a transformer: the pipeline's own calls (its conditioning, scheduler and CFG batching)
        calls = collect_pipeline_calls(pipe, unet, default_prompts(pipe, samples, seed), steps, guidance, seed)
    else:
        inputs = fixed_inputs(pipe, samples, steps, seed)
    state = quantize_unet(unet, config)
    calibrate(pipe, state, config, unet=unet)

    def outputs() -> list[torch.Tensor]:
        if is_dit(pipe):
            return [unet(*a, **k)[0] for a, k in calls]
        return [cfg_eps(unet, x, t, c, u, guidance) for x, t, c, u in inputs]

    state.set_quantize(False)
    reference = outputs()
    power = float(torch.stack([r.pow(2).mean() for r in reference]).mean())
    rows = []
    for name, layer in state.layers.items():
        layer.quantize, layer._cache = True, None
        per_input = np.array([float((o - r).pow(2).mean()) for o, r in zip(outputs(), reference, strict=True)])
        layer.quantize, layer._cache = False, None
        rel = per_input / max(power, 1e-30)
        rows.append({"layer": name, "role": layer.role, "weight_bits": layer.w_quant.bits,
                     "act_bits": layer.a_quant.bits, "params": layer.base_layer.weight.numel(),
                     "eps_mse": float(per_input.mean()), "eps_rel_mse": float(rel.mean()),
                     "eps_rel_mse_ci": bootstrap_interval(rel, np.mean)})
    return rows
