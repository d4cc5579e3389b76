"""PTQ calibration, EfficientDM / QAT fine-tuning steps, cancel and resume (tiny-arch, a few iterations)."""

import copy
import threading

import pytest
import torch

from backend.core import JobControl
from backend.metadata import pipeline_info
from backend.methods.quant import FinetuneConfig, QuantConfig, apply, ptq
from backend.methods.quant.calibrate import cfg_eps, ddim_scheduler, encode, latent_shape
from backend.methods.quant.model import get_state
from backend.methods.quant.train import finetune

CALIB = {"calib_prompts": 2, "calib_steps": 3, "calib_samples": 4}
PROMPTS = ["a small red circle in the center", "a large blue square at the top left"]


def _quant(**kw) -> QuantConfig:
    return QuantConfig.from_dict({**CALIB, **kw})


def _ft(**kw) -> FinetuneConfig:
    return FinetuneConfig.from_dict({"weight_bits": 4, "act_bits": 4, "train_steps": 2, "batch_size": 2,
                                     "lora_rank": 4, "minutes": 10, **kw})


@torch.no_grad()
def _distill_loss(pipe, student, ft, seed=123) -> float:
    """Mean teacher-vs-student MSE along one fixed teacher trajectory (the training objective)."""
    sched = ddim_scheduler(pipe, ft.train_steps)
    cond, uncond = encode(pipe, PROMPTS)
    x = torch.randn(latent_shape(pipe, 2), generator=torch.Generator().manual_seed(seed))
    student.eval()
    losses = []
    for t in sched.timesteps:
        e_t = cfg_eps(pipe.unet, x, t, cond, uncond, 7.5)
        losses.append(float(torch.mean((cfg_eps(student, x, t, cond, uncond, 7.5) - e_t) ** 2)))
        x = sched.step(e_t, t, x).prev_sample
    return sum(losses) / len(losses)


def test_ptq_calibrates_on_tiny(tiny_pipe):
    x, e = torch.randn(1, 4, 8, 8), torch.randn(1, 16, 16)
    with torch.no_grad():
        ref = tiny_pipe.unet(x, 500, encoder_hidden_states=e).sample
    errs = {}
    for bits in (8, 4):
        pipe = copy.copy(tiny_pipe)
        pipe.unet = copy.deepcopy(tiny_pipe.unet)
        state = ptq(pipe, _quant(weight_bits=bits, act_bits=bits))
        scales = torch.stack([q.scale.detach()[0] for q in state.act_quantizers().values()])
        assert not torch.any(scales == 1.0)  # every range was calibrated
        with torch.no_grad():
            out = pipe.unet(x, 500, encoder_hidden_states=e).sample
        errs[bits] = float((out - ref).norm() / ref.norm())
    assert errs[8] < 0.15 and errs[8] < errs[4]


def test_apply_with_attention_matmuls(tiny_pipe):
    pipe = copy.copy(tiny_pipe)
    pipe.unet = copy.deepcopy(tiny_pipe.unet)
    apply(pipe, _quant(weight_bits=8, act_bits=8, quantize_attn_matmul=True))
    assert get_state(pipe.unet).attn and pipeline_info(pipe).model_size_mb > 0
    with torch.no_grad():
        out = pipe.unet(torch.randn(1, 4, 8, 8), 10, encoder_hidden_states=torch.randn(1, 16, 16)).sample
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("method", ["efficientdm", "qat"])
def test_few_steps_lower_the_loss(tiny_pipe, tmp_path, method):
    ft = _ft(method=method, max_iters=6, lora_lr_scale=0.5, qat_lr=1e-3, act_lr=1e-3)
    from backend.methods.quant.train import build_student

    torch.manual_seed(0)
    before, _ = build_student(tiny_pipe, ft, PROMPTS, quant=_quant())
    loss0 = _distill_loss(tiny_pipe, before, ft)
    result = finetune(tiny_pipe, ft, tmp_path / method, prompts=PROMPTS, quant=_quant())
    assert result["status"] == "done" and result["iters"] == 6
    assert _distill_loss(tiny_pipe, result["student"], ft) < loss0


def test_cancel_then_resume(tiny_pipe, tmp_path):
    out = tmp_path / "ckpt"
    cancel = threading.Event()
    seen = []

    def on_progress(fields):
        seen.append(fields)
        if fields["step"] == 2:
            cancel.set()

    ft = _ft(max_iters=4)
    r1 = finetune(tiny_pipe, ft, out, job=JobControl(on_progress=on_progress, cancel=cancel), prompts=PROMPTS,
                  quant=_quant())
    assert r1["status"] == "cancelled" and r1["iters"] == 2 and (out / "train_state.safetensors").exists()
    assert {"step", "loss", "elapsed_s", "eta_s"} <= set(seen[0])
    steps = []
    r2 = finetune(tiny_pipe, ft, out, job=JobControl(on_progress=lambda f: steps.append(f["step"])), prompts=PROMPTS)
    assert r2["status"] == "done" and steps == [3, 4]
    with pytest.raises(ValueError, match="cannot resume"):
        finetune(tiny_pipe, _ft(max_iters=6, lora_rank=2), out, prompts=PROMPTS)
    with pytest.raises(ValueError, match="cannot resume, first_last_8bit"):
        finetune(tiny_pipe, _ft(max_iters=6), out, prompts=PROMPTS, quant=_quant(first_last_8bit=False))


def test_cli_layer_policy_flags():
    import argparse

    from backend.methods.quant import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    base = ["--variant", "{}", "--out", "x", "--w-bits", "4", "--a-bits", "4"]
    args = parser.parse_args(base)
    assert cli.quant_from_args(args, cli.config_from_args(args)) is None  # the paper's policy (or the resumed one)
    args = parser.parse_args(base + ["--no-first-last-8bit", "--quantize-skip", "same", "--quantize-attn-matmul"])
    quant = cli.quant_from_args(args, cli.config_from_args(args))
    assert (quant.weight_bits, quant.act_bits, quant.first_last_8bit, quant.quantize_skip,
            quant.quantize_downsample, quant.quantize_attn_matmul) == (4, 4, False, "same", "w8a8", True)


def test_first_last_layers_can_stay_untrained_at_the_target_bits(tiny_pipe):
    """With every layer at the target bits, train_first_last=False gives conv_in / conv_out / the time embedding no
    LoRA, no trainable step size and no optimizer group; every other target-bit layer trains as before."""
    from backend.methods.quant import cli
    from backend.methods.quant.model import layer_role
    from backend.methods.quant.train import build_student, param_groups

    policy = _quant(first_last_8bit=False)
    ends = ("first_last", "time_embed")
    for train_ends in (True, False):
        ft = _ft(train_first_last=train_ends)
        _, state = build_student(tiny_pipe, ft, calibrate_acts=False, quant=policy)
        layers = state.trainable_layers()
        assert {layer_role(n) for n in layers} >= set(ends)
        for name, layer in layers.items():
            trained = train_ends or layer_role(name) not in ends
            assert (layer.lora_rank > 0) == trained and layer.w_quant.scale.requires_grad == trained
            assert layer.a_quant.scale.requires_grad == trained
        grouped = {id(p) for g in param_groups(state, ft) for p in g["params"]}
        trainable = {id(p) for layer in layers.values() for p in layer.parameters() if p.requires_grad}
        assert grouped == trainable
    parser = __import__("argparse").ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--variant", "{}", "--out", "x", "--no-train-first-last"])
    assert cli.config_from_args(args).train_first_last is False


@pytest.mark.parametrize("max_iters", [0, 4])
def test_the_progress_bar_counts_iterations_or_the_time_budget(tiny_pipe, tmp_path, max_iters):
    """bench quant (grid and curves) and finetune show one bar: iterations of --max-iters, else training seconds of
    the budget, with the loss; it ends at the fine-tune's own count."""
    from backend.methods.quant.train import progress_bar

    ft = _ft(max_iters=max_iters, minutes=0.02)
    bar, on_progress = progress_bar(ft, "test", disable=True)
    result = finetune(tiny_pipe, ft, tmp_path / "s", prompts=PROMPTS, quant=_quant(),
                      job=JobControl(on_progress=on_progress))
    bar.close()
    assert bar.total == (max_iters or int(ft.minutes * 60))
    assert bar.n == (result["iters"] if max_iters else min(bar.total, int(result["minutes"] * 60)))
    assert bar.postfix and "loss=" in bar.postfix
