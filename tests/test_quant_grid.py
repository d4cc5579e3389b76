"""bench quant's grid, sensitivity map, mixed precision and cost comparison, on the tiny random architecture."""

import pytest
import torch

from backend.bench.quant_cost import measure_cost
from backend.metadata import pipeline_info


def test_cost_bench_counts_fewer_trainable_parameters_for_efficientdm_than_for_qat(tiny_pipe):
    rows = measure_cost(tiny_pipe, 4, 4, lora_rank=2, batch=1, repeats=2, model="tiny-arch")
    effdm, qat, versus = rows
    assert (effdm["method"], qat["method"], versus["method"]) == ("efficientdm", "qat", "efficientdm_vs_qat")
    assert 0 < effdm["trainable_params"] < qat["trainable_params"]
    assert 0 < effdm["optimizer_state_mb"] < qat["optimizer_state_mb"]
    assert effdm["s_per_iter"] > 0 and len(effdm["s_per_iter_ci"]) == 2 and versus["iter_cost_ratio"] > 0
    assert "16.2x" in versus["reproduces"] and "LDM-4" in versus["not_reproduced"]


def test_cost_bench_one_student_at_a_time_gives_rows_and_an_independent_samples_ratio(tiny_pipe):
    effdm, qat, versus = measure_cost(tiny_pipe, 4, 4, lora_rank=2, batch=1, repeats=2, model="tiny-arch",
                                      timing_mode="sequential")
    assert versus["timing_mode"] == "sequential" and "independent" in versus["timing"]
    assert 0 < effdm["trainable_params"] < qat["trainable_params"] and effdm["peak_mem_mb"] >= 0
    assert versus["iter_cost_ratio"] > 0 and len(versus["iter_cost_ratio_ci"]) == 2


def test_cost_memory_plan_picks_interleaved_sequential_or_refuses(tiny_pipe):
    from backend.bench.quant_cost import plan_memory

    mib = sum(p.numel() * p.element_size() for p in tiny_pipe.unet.parameters()) / 2**20
    assert plan_memory(tiny_pipe.unet, "tiny-arch", "cpu", free_mb=100 * mib) == "interleaved"
    assert plan_memory(tiny_pipe.unet, "tiny-arch", "cpu", free_mb=6 * mib) == "sequential"
    with pytest.raises(ValueError, match="needs about .* GiB free on cpu"):
        plan_memory(tiny_pipe.unet, "tiny-arch", "cpu", free_mb=2 * mib)


def test_ratio_interval_of_independent_samples():
    from backend.metrics.paired import ratio_interval

    ratio, ci = ratio_interval([2.0, 2.1, 1.9, 2.0], [1.0, 1.05, 0.95, 1.0])
    assert ratio == pytest.approx(2.0) and ci[0] < 2.0 < ci[1] and ci[1] < 2.3
    assert ratio_interval([2.0], [1.0]) == (2.0, None)


def test_cost_bench_refuses_a_model_without_quantizable_layers(tiny_pipe):
    class NoLayers(torch.nn.Module):
        config = tiny_pipe.unet.config

        def __init__(self):
            super().__init__()
            self.norm = torch.nn.GroupNorm(1, 4)

    tiny_pipe.unet = NoLayers()
    with pytest.raises(ValueError, match="no quantizable layers"):
        measure_cost(tiny_pipe, 4, 4, model="none")


def test_grid_on_tiny_arch_gives_paired_rows_with_intervals_and_a_heat_map(tmp_path):
    from backend.bench.quant_grid import run_grid, write_html
    from backend.world.prompts import eval_prompts

    prompts = eval_prompts("hard", 4)
    rows = run_grid("tiny-arch", prompts, [0, 1, 2, 3], [(4, 8, "paper"), (2, 3, "all-same")], steps=2)
    fp, *ptq, summary = rows
    assert fp["method"] == "fp" and summary["method"] == "summary" and summary["ptq_breaks_at"] == "none"
    assert [r["setting"] for r in ptq] == ["W4A8 paper", "W2A3 all-same"]
    for r in ptq:
        lo, hi = r["psnr_vs_baseline_ci"]
        assert lo <= r["psnr_vs_baseline"] <= hi and len(r["ssim_vs_baseline_ci"]) == 2
        assert r["prompt_accuracy_delta"] is None and r["ptq_breaks"] is False  # random weights: not judged
    assert ptq[1]["model_size_mb"] < ptq[0]["model_size_mb"] < fp["model_size_mb"]
    assert ptq[1]["psnr_vs_baseline"] < ptq[0]["psnr_vs_baseline"]
    page = write_html(rows, tmp_path / "grid.html").read_text()
    assert "W2" in page and "A3" in page and "plotly" in page


def test_a_significant_drop_of_ten_points_breaks_and_recovery_is_paired():
    import numpy as np

    from backend.bench.quant_grid import breaks, recovery, settings

    assert breaks({"delta": -0.2, "ci": [-0.3, -0.1]}) and not breaks({"delta": -0.2, "ci": [-0.4, 0.01]})
    assert not breaks({"delta": -0.05, "ci": [-0.08, -0.02]}) and not breaks(None)
    fp, ptq, tuned = np.ones(20), np.r_[np.zeros(10), np.ones(10)], np.r_[np.zeros(4), np.ones(16)]
    r = recovery(fp, ptq, tuned)
    assert r["recovered"]["delta"] == 0.3 and r["recovered_fraction"] == 0.6 and r["recovered"]["ci"][0] > 0
    with pytest.raises(ValueError, match="no valid setting"):
        settings([], [4], ["paper"])


def test_sensitivity_map_has_one_entry_per_quantized_layer(tiny_pipe):
    from backend.methods.quant.sensitivity import sensitivity_map, target_config

    layers = [n for n, m in tiny_pipe.unet.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    rows = sensitivity_map(tiny_pipe, target_config(2, 3, calib_prompts=2, calib_steps=3), samples=1, steps=2)
    assert [r["layer"] for r in rows] == layers
    assert all(r["weight_bits"] == 2 and r["act_bits"] == 3 and r["eps_mse"] >= 0 for r in rows)
    assert max(r["eps_rel_mse"] for r in rows) > 0


def test_mixed_precision_meets_its_size_budget_and_refuses_one_below_the_smallest(tiny_pipe, monkeypatch):
    from backend.methods import quant
    from backend.methods.quant import sensitivity
    from backend.methods.quant.mixed import packed_weight_mb, smallest_size_mb
    from backend.methods.quant.model import get_state

    convs = {n: m.weight.numel() for n, m in tiny_pipe.unet.named_modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    ranking = [{"layer": n, "weight_bits": 2, "act_bits": 4, "params": p, "eps_rel_mse": float(i % 7)}
               for i, (n, p) in enumerate(convs.items())]  # a map's rows (measured in the test above)
    monkeypatch.setattr(sensitivity, "sensitivity_map", lambda *a, **k: ranking)
    knobs = {"weight_bits": 2, "act_bits": 4, "calib_prompts": 2, "calib_steps": 3}
    smallest = smallest_size_mb(tiny_pipe, quant.QuantConfig.from_dict(knobs))
    budget = smallest + 0.3 * sum(packed_weight_mb(p, 8) for p in convs.values())
    with pytest.raises(ValueError, match="below the smallest packed size"):
        quant.ptq(tiny_pipe, quant.QuantConfig.from_dict({**knobs, "mixed": {"budget_mb": smallest * 0.99}}))
    assert get_state(tiny_pipe.unet) is None  # refused before anything was quantized
    quant.apply(tiny_pipe, quant.QuantConfig.from_dict({**knobs, "mixed": {"budget_mb": budget}}))
    assert smallest < pipeline_info(tiny_pipe).model_size_mb <= budget
    layers = get_state(tiny_pipe.unet).layers
    raised = [n for n, m in layers.items() if m.role == "body" and m.w_quant.bits == 8]
    assert raised and all(m.a_quant.bits == 8 for n, m in layers.items() if n in raised)
    assert {ranking[[r["layer"] for r in ranking].index(n)]["eps_rel_mse"] for n in raised} >= {6.0}


def test_the_fine_tune_watch_warns_when_judged_quality_falls_while_the_loss_falls(shapes_available):
    import copy

    from backend.methods.quant.watch import QualityWatch
    from backend.models import load_pipeline
    from backend.sampling import seeded_sampler

    pipe = load_pipeline("shapes")
    # reference: the FP model
    watch = QualityWatch(pipe, seeded_sampler(pipe, steps=10), n=8, start_unet=pipe.unet, settle_iters=10)
    assert watch.curve[0]["prompt_accuracy"] == watch.fp_accuracy > 0
    watch.observe({"loss": 0.05, "step": 1})
    watch.observe({"loss": 0.5, "step": 10})
    assert watch.curve[0]["loss"] == 0.5  # the start's loss: the running mean after one trajectory
    broken = copy.deepcopy(pipe.unet)
    torch.nn.init.zeros_(broken.conv_out.weight)
    watch.observe({"loss": 0.4, "step": 200})
    assert watch(broken, 120.0, 200) is False
    assert watch.curve[1]["prompt_accuracy"] < watch.fp_accuracy
    vs = watch.curve[1]["vs_start"]  # paired against the start, with its interval
    assert vs["delta"] == watch.curve[1]["prompt_accuracy"] - watch.curve[0]["prompt_accuracy"]
    assert vs["ci"][0] <= vs["delta"] <= vs["ci"][1] and vs["n"] == 8
    assert len(watch.warnings) == 1 and "loss 0.5 → 0.4" in watch.warnings[0]
    watch.observe({"loss": 0.6, "step": 300})  # quality down but the loss up: the loss shows it, no warning
    watch(broken, 180.0, 300)
    assert len(watch.warnings) == 1


def test_efficientdm_runs_at_the_mildest_weight_or_any_break_per_policy_or_as_asked():
    from backend.bench.quant_grid import efficientdm_settings, parse_at

    def row(w, a, policy, delta, breaks=True):
        return {"weight_bits": w, "act_bits": a, "policy": policy, "ptq_breaks": breaks,
                "prompt_accuracy_delta": {"delta": delta}}

    rows = [row(2, 4, "paper", -0.8), row(3, 4, "paper", -0.1), row(4, 4, "paper", -0.05, breaks=False),
            row(3, 4, "all-same", -0.23), row(2, 8, "all-same", -0.75)]
    grid = [(r["weight_bits"], r["act_bits"], r["policy"]) for r in rows]
    chosen = efficientdm_settings(rows, parse_at("mildest", grid))
    assert [(r["weight_bits"], r["policy"]) for r in chosen] == [(3, "paper"), (3, "all-same")]
    # the default: per policy, the mildest break at the widest activations (8 bits here; paper has none)
    assert efficientdm_settings(rows, parse_at("weights", grid)) == [rows[4]]
    assert len(efficientdm_settings(rows, "all")) == 4  # every breaking setting, never a non-breaking one
    assert efficientdm_settings(rows, parse_at("W2A8:all-same", grid)) == [rows[4]]
    assert efficientdm_settings(rows, parse_at("W4A4:paper", grid)) == []  # asked for, but PTQ does not break
    for bad in ("W9A4:paper", "W3A4", "fastest"):
        with pytest.raises(ValueError, match="--efficientdm-at .* allowed: weights, mildest, all"):
            parse_at(bad, grid)
