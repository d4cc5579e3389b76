"""bench quant's grid, sensitivity map, mixed precision and cost comparison, on the tiny random architecture."""

import pytest
import torch

from backend.bench.quant_cost import measure_cost


def test_cost_bench_counts_fewer_trainable_parameters_for_efficientdm_than_for_qat(tiny_pipe):
    rows = measure_cost(tiny_pipe, 4, 4, lora_rank=2, batch=1, repeats=2, model="tiny-arch")
    effdm, qat, versus = rows
    assert (effdm["method"], qat["method"], versus["method"]) == ("efficientdm", "qat", "efficientdm_vs_qat")
    assert 0 < effdm["trainable_params"] < qat["trainable_params"]
    assert 0 < effdm["optimizer_state_mb"] < qat["optimizer_state_mb"]
    assert effdm["s_per_iter"] > 0 and len(effdm["s_per_iter_ci"]) == 2 and versus["iter_cost_ratio"] > 0
    assert "16.2x" in versus["reproduces"] and "LDM-4" in versus["not_reproduced"]


def test_cost_bench_refuses_a_model_without_quantizable_layers(tiny_pipe):
    class NoLayers(torch.nn.Module):
        config = tiny_pipe.unet.config

        def __init__(self):
            super().__init__()
            self.norm = torch.nn.GroupNorm(1, 4)

    tiny_pipe.unet = NoLayers()
    with pytest.raises(ValueError, match="no quantizable layers"):
        measure_cost(tiny_pipe, 4, 4, model="none")
