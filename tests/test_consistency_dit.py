"""Consistency distillation on DiT: LCD students (full, and a peft LoRA) from tiny-pixart and, on the flow ODE, from
tiny-sd3 lower their loss, load in stock diffusers (the family's pipeline with LCMScheduler / FlowMatchLCMScheduler)
and generate, through the Variant too; Flux is refused in one line naming why."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from backend.methods.consistency import DistillConfig, cli, lcd
from backend.methods.consistency.distill import Distiller, distill
from backend.methods.consistency.students import STUDENTS
from backend.methods.registry import method
from backend.models import load_pipeline
from backend.runs.build import build_pipeline
from backend.sampling import generate
from backend.variant import Variant

PROMPT = ["a small red circle in the center"]


def _cfg(**kw) -> DistillConfig:
    return DistillConfig.from_dict({"batch_size": 2, "minutes": 0, "max_steps": 2, "data_pool": 0, "lr": 1e-3,
                                    **kw})


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """{(model, "full" | "lora"): a student folder}, made on first use."""
    torch.set_num_threads(1)
    root, made = tmp_path_factory.mktemp("lcd-dit"), {}

    def get(model: str, which: str):
        if (model, which) not in made:
            out = root / f"{model}-{which}"
            cfg = _cfg(lora=True, lora_rank=4) if which == "lora" else _cfg()
            assert distill(load_pipeline(model), cfg, out)["status"] == "done"
            made[model, which] = out
        return made[model, which]

    return get


def test_flow_schedule_solver_step_is_euler_and_f_is_the_x0_prediction():
    sigmas = torch.linspace(0.001, 1.0, 1000)
    sched = lcd.NoiseSchedule.flow(sigmas)
    solver = lcd.DDIMSolver(sched, 1000, 50)
    z, v = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    t, index = solver.start_and_end(torch.tensor([3, 49]))[0], torch.tensor([3, 49])
    x0, eps = lcd.x0_and_eps(v, z, t, sched, "flow")
    s_t, s_prev = sigmas[t].view(-1, 1, 1, 1), sigmas[solver.timesteps[index - 1]].view(-1, 1, 1, 1)
    assert torch.allclose(solver.ddim_step(x0, eps, index), z + (s_prev - s_t) * v, atol=1e-5)  # Euler on the ODE
    assert torch.allclose(lcd.consistency_output(v, z, t, sched, "flow"), z - s_t * v)  # FlowMatchLCMScheduler's x0
    assert torch.equal(sched.model_t[t], sigmas[t] * 1000)


@pytest.mark.parametrize("model", ["tiny-pixart", "tiny-sd3"])
def test_dit_distillation_steps_lower_the_loss(model):
    pipe = load_pipeline(model)
    d = Distiller(pipe, DistillConfig.from_dict({"batch_size": 4, "minutes": 0, "max_steps": 3, "data_pool": 0,
                                                 "loss": "l2", "lr": 3e-3, "ema_decay": 0.0}))
    before = d.eval_loss(data_step=7)
    for _ in range(8):
        d.step(data_step=7)
    assert d.eval_loss(data_step=7) < before
    assert not any(p.requires_grad for p in pipe.transformer.parameters())  # the teacher stays frozen


def test_the_registry_and_the_student_kinds_name_the_same_families():
    assert set(method("consistency").families) == set(STUDENTS)


@pytest.mark.parametrize("model", ["tiny-pixart", "tiny-sd3"])
def test_full_dit_student_loads_in_the_stock_pipeline_with_its_consistency_sampler(model, ckpts, monkeypatch):
    from diffusers import FlowMatchLCMScheduler, LCMScheduler, PixArtSigmaPipeline, StableDiffusion3Pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cls, sampler = {"tiny-pixart": (PixArtSigmaPipeline, LCMScheduler),
                    "tiny-sd3": (StableDiffusion3Pipeline, FlowMatchLCMScheduler)}[model]
    pipe = cls.from_pretrained(ckpts(model, "full"), local_files_only=True)
    assert isinstance(pipe.scheduler, sampler)
    base = load_pipeline(model).transformer.state_dict()
    student = pipe.transformer.state_dict()
    assert student.keys() == base.keys() and any(not torch.equal(student[k], base[k]) for k in base)  # it trained
    pipe.set_progress_bar_config(disable=True)
    extra = {"use_resolution_binning": False} if model == "tiny-pixart" else {}
    images = pipe(PROMPT, num_inference_steps=4, guidance_scale=0.0, height=32, width=32, output_type="np",
                  max_sequence_length=16, generator=torch.Generator().manual_seed(0), **extra).images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


@pytest.mark.parametrize("model", ["tiny-pixart", "tiny-sd3"])
def test_dit_lora_loads_with_stock_peft_and_changes_the_weights(model, ckpts):
    import copy

    from peft import PeftModel

    base = load_pipeline(model).transformer
    folder = ckpts(model, "lora") / "transformer_lora"
    merged = PeftModel.from_pretrained(copy.deepcopy(base), str(folder)).merge_and_unload()
    q_base, q_lora = (dict(m.named_parameters())["transformer_blocks.0.attn.to_q.weight" if model == "tiny-sd3" else
                                                 "transformer_blocks.0.attn1.to_q.weight"] for m in (base, merged))
    assert q_base.shape == q_lora.shape and not torch.equal(q_base, q_lora)


@pytest.mark.parametrize("model", ["tiny-pixart", "tiny-sd3"])
@pytest.mark.parametrize("which", ["full", "lora"])
def test_variant_generates_with_a_dit_student(model, which, ckpts):
    v = Variant.from_dict({"model": model, "scheduler": "lcm", "steps": 4,
                           "consistency": {"checkpoint": str(ckpts(model, which))}})
    pipe = build_pipeline(v)
    images = generate(pipe, v, PROMPT, [0])
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
    assert type(pipe.scheduler).__name__ == {"tiny-pixart": "DistilledLCMScheduler",
                                             "tiny-sd3": "DistilledFlowMatchLCMScheduler"}[model]
    assert not any("lora" in n for n, _ in pipe.transformer.named_parameters())  # fused, not a live adapter
    base = load_pipeline(model).transformer  # the cached base model is untouched
    assert all(torch.equal(a, b) for a, b in zip(base.parameters(), load_pipeline(model).transformer.parameters(),
                                                 strict=True))


@pytest.mark.parametrize("family", ["flux"])
def test_flux_is_refused_in_one_line(family, tmp_path, capsys):
    args = argparse.Namespace(variant=f'{{"model": "tiny-{family}"}}', out=str(tmp_path / "s"), minutes=0.1,
                              max_steps=1, reward="none", beta=None, proxy=False, lora=False, batch_size=None,
                              lr=None, lr_decay=False, w_min=None, w_max=None, num_ddim_timesteps=None, loss=None,
                              data=None, seed=None, checkpoint_every=None, json=False)
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"family '{family}'" in err and "guidance-distilled" in err
    assert not (tmp_path / "s").exists()
