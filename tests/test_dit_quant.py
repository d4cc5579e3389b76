"""Quantization of a transformer's Linear layers: PTQ W8A8 (simulated) and real int8 kernels on tiny PixArt / SD3 /
Flux, the DiT layer policy (patch embedding, final layer, adaLN modulation at W8A8) and the ISA reported."""

import numpy as np
import pytest

from backend.metadata import pipeline_info
from backend.methods.quant.isa import int8_support
from backend.methods.quant.model import get_state, layer_role
from backend.models import denoiser
from backend.runs.build import build_pipeline
from backend.sampling import generate
from backend.variant import Variant

CALIB = {"calib_prompts": 2, "calib_steps": 3, "calib_samples": 8}


def _run(data: dict):
    v = Variant.from_dict({"steps": 3, **data})
    pipe = build_pipeline(v)
    return generate(pipe, v, ["a red circle"], [0]), pipe


def test_dit_layer_roles():
    assert layer_role("pos_embed.proj") == layer_role("proj_out") == layer_role("x_embedder") == "first_last"
    for name in ("adaln_single.linear", "transformer_blocks.3.norm1.linear",
                 "time_text_embed.timestep_embedder.linear_1",
                 "single_transformer_blocks.0.norm.linear", "norm_out.linear", "caption_projection.linear_1"):
        assert layer_role(name) == "time_embed", name
    assert layer_role("transformer_blocks.0.attn1.to_q") == layer_role("transformer_blocks.0.ff.net.2") == "body"


@pytest.mark.parametrize("model", ["tiny-pixart", "tiny-sd3"])
def test_ptq_w8a8_and_real_int8_on_linear_layers(model):
    base, _ = _run({"model": model})
    sim, pipe = _run({"model": model, "quant": {"weight_bits": 8, "act_bits": 8, **CALIB}})
    state = get_state(denoiser(pipe))
    roles = {row["role"] for row in state.summary_rows()}
    assert {"first_last", "time_embed", "body"} <= roles
    linear = [n for n, m in state.layers.items() if type(m.base_layer).__name__ == "Linear"]
    assert any(".attn" in n for n in linear) and any(".ff." in n for n in linear)
    assert all(not state.layers[n].a_quant.temporal for n in state.layers if layer_role(n) == "time_embed")
    assert np.isfinite(sim).all() and not np.array_equal(sim, base)
    real, pipe = _run({"model": model, "quant": {"weight_bits": 8, "act_bits": 8, "kernels": "real", **CALIB}})
    kernels = pipeline_info(pipe).kernels
    assert np.isfinite(real).all()
    support = int8_support()  # the report names this machine's ISA (amx, avx512_vnni, avx2, …) or why it simulates
    expected = f"real int8 kernels (oneDNN, {support.isa.name}" if not support.reason else "simulated"
    assert kernels.startswith(expected), (kernels, expected)


def test_w4a8_and_block_cache_stack_on_flux():
    images, pipe = _run({"model": "tiny-flux", "quant": {"weight_bits": 4, "act_bits": 8, **CALIB},
                         "deepcache": {"interval": 2}})
    assert np.isfinite(images).all() and get_state(denoiser(pipe)).config.weight_bits == 4


def test_sensitivity_map_and_mixed_precision_per_linear_layer():
    from backend.methods.quant.config import QuantConfig
    from backend.methods.quant.sensitivity import sensitivity_map
    from backend.models import load_pipeline

    pipe = load_pipeline("tiny-pixart")
    config = QuantConfig(weight_bits=4, act_bits=8, **CALIB)
    rows = sensitivity_map(pipe, config, samples=2, steps=2)
    linear = [r for r in rows if ".attn" in r["layer"] or ".ff." in r["layer"]]
    assert linear and all(r["eps_mse"] >= 0 for r in rows)
    assert {r["weight_bits"] for r in rows if r["role"] == "body"} == {4}
    assert {r["weight_bits"] for r in rows if r["role"] in ("first_last", "time_embed")} == {8}
    images, pipe = _run({"model": "tiny-pixart", "quant": {"weight_bits": 4, "act_bits": 8, **CALIB,
                                                            "mixed": {"budget_mb": 1.0}}})
    assert np.isfinite(images).all()
