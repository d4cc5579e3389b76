"""Consistency distillation on DiT: an LCD student (full, and a peft LoRA) from tiny-pixart loads in stock diffusers
and generates, through the Variant too; the flow-matching families (SD3, Flux) are refused in one line naming why."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from backend.methods.consistency import DistillConfig, cli
from backend.methods.consistency.distill import distill
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
def full_ckpt(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("lcd-dit") / "full"
    assert distill(load_pipeline("tiny-pixart"), _cfg(), out)["status"] == "done"
    return out


@pytest.fixture(scope="module")
def lora_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("lcd-dit") / "lora"
    assert distill(load_pipeline("tiny-pixart"), _cfg(lora=True, lora_rank=4), out)["status"] == "done"
    return out


def test_the_registry_and_the_student_kinds_name_the_same_families():
    assert set(method("consistency").families) == set(STUDENTS)


def test_full_pixart_student_loads_in_the_stock_pixart_pipeline_with_the_lcm_scheduler(full_ckpt, monkeypatch):
    from diffusers import LCMScheduler, PixArtSigmaPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = PixArtSigmaPipeline.from_pretrained(full_ckpt, local_files_only=True)
    assert isinstance(pipe.scheduler, LCMScheduler)
    base = load_pipeline("tiny-pixart").transformer.state_dict()
    student = pipe.transformer.state_dict()
    assert student.keys() == base.keys() and any(not torch.equal(student[k], base[k]) for k in base)  # it trained
    pipe.set_progress_bar_config(disable=True)
    images = pipe(PROMPT, num_inference_steps=4, guidance_scale=0.0, height=32, width=32, output_type="np",
                  max_sequence_length=16, use_resolution_binning=False,
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


def test_pixart_lora_loads_with_stock_peft_and_changes_the_weights(lora_ckpt):
    from peft import PeftModel

    base = load_pipeline("tiny-pixart").transformer
    import copy

    merged = PeftModel.from_pretrained(copy.deepcopy(base), str(lora_ckpt / "transformer_lora")).merge_and_unload()
    q_base, q_lora = base.transformer_blocks[0].attn1.to_q.weight, merged.transformer_blocks[0].attn1.to_q.weight
    assert q_base.shape == q_lora.shape and not torch.equal(q_base, q_lora)


@pytest.mark.parametrize("which", ["full", "lora"])
def test_variant_generates_with_a_pixart_student(which, full_ckpt, lora_ckpt):
    ckpt = full_ckpt if which == "full" else lora_ckpt
    v = Variant.from_dict({"model": "tiny-pixart", "scheduler": "lcm", "steps": 4,
                           "consistency": {"checkpoint": str(ckpt)}})
    pipe = build_pipeline(v)
    images = generate(pipe, v, PROMPT, [0])
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
    assert type(pipe.scheduler).__name__ == "DistilledLCMScheduler"
    assert not any("lora" in n for n, _ in pipe.transformer.named_parameters())  # fused, not a live adapter
    base = load_pipeline("tiny-pixart").transformer  # the cached base model is untouched
    assert all(torch.equal(a, b) for a, b in zip(base.parameters(), load_pipeline("tiny-pixart").transformer
                                                 .parameters(), strict=True))


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_matching_families_are_refused_in_one_line(family, tmp_path, capsys):
    args = argparse.Namespace(variant=f'{{"model": "tiny-{family}"}}', out=str(tmp_path / "s"), minutes=0.1,
                              max_steps=1, reward="none", beta=None, proxy=False, lora=False, batch_size=None,
                              lr=None, lr_decay=False, w_min=None, w_max=None, num_ddim_timesteps=None, loss=None,
                              data=None, seed=None, checkpoint_every=None, json=False)
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"family '{family}'" in err and "flow-matching" in err
    assert not (tmp_path / "s").exists()
