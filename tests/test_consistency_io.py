"""RG-LCD checkpoints: stock-pipeline loading offline (full and LoRA), Variant use, cancel/resume, bad input."""

import argparse
import copy
import json

import pytest
import torch

from backend.core import JobControl
from backend.metadata import pipeline_info
from backend.methods.consistency import (
    ConsistencyConfig,
    DistillConfig,
    apply,
    check_steps,
    check_variant,
    cli,
    read_meta,
    rewards,
)
from backend.methods.consistency.distill import distill, latest_state, work_dir_for
from backend.models import load_pipeline

PROMPT = ["a small red circle in the center"]


def cfg(**kw):
    return DistillConfig.from_dict({"batch_size": 2, "minutes": 0, "max_steps": 2, **kw})


@pytest.fixture(scope="module")
def full_ckpt(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("lcd") / "full"
    summary = distill(load_pipeline("tiny-arch"), cfg(), out)
    assert summary["status"] == "done" and summary["steps"] == 2
    return out


@pytest.fixture(scope="module")
def lora_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("lcd") / "lora"
    distill(load_pipeline("tiny-arch"), cfg(lora=True, lora_rank=4), out)
    return out


def test_full_student_loads_in_stock_lcm_pipeline_offline(full_ckpt, monkeypatch):
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not work_dir_for(full_ckpt).exists()  # the partial folder is gone once the student is in place
    pipe = LatentConsistencyModelPipeline.from_pretrained(full_ckpt, local_files_only=True)
    assert isinstance(pipe.scheduler, LCMScheduler) and pipe.unet.config.time_cond_proj_dim == 256
    pipe.set_progress_bar_config(disable=True)
    images = pipe(PROMPT, num_inference_steps=2, height=16, width=16, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 16, 16, 3)


def test_lora_loads_with_stock_sd_pipeline_offline(lora_ckpt, tmp_path, monkeypatch):
    from diffusers import LCMScheduler, StableDiffusionPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load_pipeline("tiny-arch").save_pretrained(tmp_path / "base")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "base", local_files_only=True)
    pipe.load_lora_weights(str(lora_ckpt))
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(PROMPT, num_inference_steps=2, guidance_scale=1.0, height=16, width=16, output_type="np").images
    assert images.shape == (1, 16, 16, 3)


def test_variant_with_consistency_section(full_ckpt, lora_ckpt):
    from diffusers import LCMScheduler

    from backend.runs.build import build_pipeline
    from backend.sampling import generate
    from backend.variant import Variant

    base = load_pipeline("tiny-arch")
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    for ckpt in (full_ckpt, lora_ckpt):
        v = Variant.from_dict({"model": "tiny-arch", "scheduler": "lcm", "steps": 2,
                               "consistency": {"checkpoint": str(ckpt)}})
        pipe = build_pipeline(v)
        assert isinstance(pipe.scheduler, LCMScheduler)
        assert generate(pipe, v, PROMPT, [0]).shape == (1, 32, 32, 3)
    fresh = load_pipeline("tiny-arch")
    assert all(torch.equal(before[k], t) for k, t in fresh.unet.state_dict().items())  # shared base untouched
    assert pipeline_info(fresh).defaults["steps"] == 20  # defaults of the base are not changed by apply


def test_cancel_then_resume(tmp_path):
    class CancelAt:
        def __init__(self, n):
            self.n, self.calls = n, 0

        def is_set(self):
            self.calls += 1
            return self.calls > self.n

    out = tmp_path / "student"
    seen = []
    c = cfg(max_steps=4)
    first = distill(load_pipeline("tiny-arch"), c, out, JobControl(cancel=CancelAt(2), on_progress=seen.append))
    assert first["status"] == "cancelled" and first["steps"] == 2 and not out.exists()
    assert (latest_state(work_dir_for(out)) / "state.safetensors").is_file() and [f["step"] for f in seen] == [1, 2]
    with pytest.raises(ValueError, match="other settings"):
        distill(load_pipeline("tiny-arch"), cfg(max_steps=4, lr=5e-4), out)
    second = distill(load_pipeline("tiny-arch"), c, out)
    assert second["status"] == "done" and second["steps"] == 4 and out.is_dir()
    assert read_meta(out)["steps"] == 4
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]


def test_steps_above_the_distilled_limit(full_ckpt):
    from backend.runs.build import build_pipeline
    from backend.sampling import generate
    from backend.variant import Variant

    meta = read_meta(full_ckpt)
    check_steps(meta, 8)
    with pytest.raises(ValueError, match="limit"):
        check_steps(meta, meta["max_steps"] + 1)
    v = Variant.from_dict({"model": "tiny-arch", "scheduler": "lcm", "steps": meta["max_steps"] + 1,
                           "consistency": {"checkpoint": str(full_ckpt)}})
    with pytest.raises(ValueError, match="distilled schedule's limit"):
        check_variant(v)
    with pytest.raises(ValueError, match="distilled schedule's limit"):
        generate(build_pipeline(v), v, PROMPT, [0])


def test_checkpoint_of_another_model(full_ckpt):
    pipe = load_pipeline("tiny-arch")
    pipe.unet = copy.deepcopy(pipe.unet)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.mul_(1.5)
    with pytest.raises(ValueError, match="distilled from base model"):
        apply(pipe, ConsistencyConfig.from_dict({"checkpoint": str(full_ckpt)}))


def test_bad_config_values(tmp_path):
    with pytest.raises(ValueError, match="beta"):
        DistillConfig.from_dict({"beta": -0.1})
    with pytest.raises(ValueError, match="reward.*allowed"):
        DistillConfig.from_dict({"reward": "aesthetics"})
    with pytest.raises(ValueError, match="unknown"):
        rewards.load_reward("aesthetics")
    with pytest.raises(ValueError, match="needs an expert reward"):
        DistillConfig.from_dict({"proxy": True})
    with pytest.raises(ValueError, match="checkpoint"):
        ConsistencyConfig.from_dict({})
    with pytest.raises(ValueError, match="not a consistency checkpoint"):
        apply(load_pipeline("tiny-arch"), ConsistencyConfig.from_dict({"checkpoint": str(tmp_path)}))


def test_missing_reward_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(rewards, "EVALUATORS", tmp_path)
    with pytest.raises(rewards.RewardError, match="reward.safetensors"):
        rewards.load_reward("shapes")
    for name, needle in (("hpsv2", "HPS_v2.1"), ("imagereward", "ImageReward")):
        with pytest.raises(rewards.RewardError, match=needle):
            rewards.load_reward(name)
    out = tmp_path / "student"
    with pytest.raises(rewards.RewardError):  # nothing is written when the reward cannot be built
        distill(load_pipeline("tiny-arch"), cfg(reward="shapes", beta=1.0), out)
    assert not out.exists() and not work_dir_for(out).exists()


def test_cli_bad_input_exits_2(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--variant", '{"model": "tiny-arch"}', "--beta", "-1", "--reward", "shapes",
                              "--out", str(tmp_path / "s"), "--minutes", "1"])
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "beta" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_cli_trains_a_lora(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "s"
    args = parser.parse_args(["--variant", '{"model": "tiny-arch"}', "--lora", "--max-steps", "1",
                              "--batch-size", "2", "--out", str(out), "--json"])
    assert cli.main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "done" and summary["kind"] == "lora" and (out / "speedlab_consistency.json").is_file()


@pytest.mark.parametrize("reward,proxy", [(name, False) for name in rewards.REWARD_NAMES] + [("shapes", True)])
def test_each_reward_trains_a_student_that_loads_in_stock_lcm_pipeline(reward, proxy, tmp_path, monkeypatch):
    """Each reward this machine can build (and the proxy) writes a stock LCM pipeline folder; a reward whose
    weights are missing is refused in one RewardError before anything is written."""
    from diffusers import LatentConsistencyModelPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "student"
    settings = cfg(reward=reward, beta=0.1, proxy=proxy, proxy_warmup=0, data="shapes:hard", data_pool=0)
    try:
        rewards.load_reward(reward)
    except rewards.RewardError:
        with pytest.raises(rewards.RewardError, match=reward):
            distill(load_pipeline("tiny-arch"), settings, out)
        assert not out.exists() and not work_dir_for(out).exists()
        return
    summary = distill(load_pipeline("tiny-arch"), settings, out)
    assert summary["status"] == "done" and ("proxy_kl" in summary) == proxy
    meta = read_meta(out)
    assert (meta["reward"], meta["proxy"]) == (reward, proxy)
    pipe = LatentConsistencyModelPipeline.from_pretrained(out, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(PROMPT, num_inference_steps=2, height=16, width=16, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 16, 16, 3)


def test_cli_reward_the_prompts_cannot_be_scored_by(tmp_path, capsys):
    """The Shapes reward on general captions (teacher samples of tiny-arch): one line, exit 2, nothing written."""
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out, prompts = tmp_path / "s", tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat on a sofa\n")
    args = parser.parse_args(["--variant", '{"model": "tiny-arch"}', "--reward", "shapes",
                              "--data", f"teacher:{prompts}", "--batch-size", "2", "--max-steps", "2",
                              "--out", str(out)])
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "reward 'shapes' scores Shapes-world prompts only" in err and len(err.splitlines()) == 1
    assert not out.exists() and not work_dir_for(out).exists()


def test_student_compared_with_itself_is_no_measurable_difference():
    from backend.runs.runner import evaluate_variant
    from backend.variant import Variant

    v = Variant.from_dict({"model": "shapes", "scheduler": "lcm", "steps": 1,
                           "consistency": {"checkpoint": "assets/rg-lcm-lora"}})
    out = evaluate_variant(v, v, n=6, prompt_set_name="hard", repeats=1)
    for key in ("prompt_accuracy_delta", "reward_delta"):
        assert out[key]["delta"] == 0 and out[key]["verdict"] == "no measurable difference at n=6"


def test_bench_lcm_contrasts_pair_students_trained_alike_but_for_the_reward():
    import numpy as np

    from backend.bench import lcm

    base = {"lora": False, "num_ddim_timesteps": 20, "data": "shapes:hard", "minutes": 7.0}
    metas = {
        "plain": {"reward": "none", "beta": 0.0, "proxy": False, "config": {**base, "reward": "none", "beta": 0.0}},
        "rg": {"reward": "shapes", "beta": 0.1, "proxy": False, "config": {**base, "reward": "shapes", "beta": 0.1}},
        "px": {"reward": "shapes", "beta": 0.1, "proxy": True,
               "config": {**base, "reward": "shapes", "beta": 0.1, "proxy": True, "minutes": 6.5}},
        "lora": {"reward": "shapes", "beta": 0.1, "proxy": False,
                 "config": {**base, "lora": True, "reward": "shapes", "beta": 0.1}},
    }
    found = {label.split(" (")[0]: (a, b) for label, a, b in lcm.contrasts(metas)}
    assert found == {"rg-lcm − lcm": ("rg", "plain"), "proxy − lcm": ("px", "plain"), "proxy − direct": ("px", "rg"),
                     "lora": ("lora", "rg")}  # LoRA vs plain or proxy differs in more than one thing: no row
    same = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    row = {"variant": "rg-lcm − lcm (rg − plain)", "steps": 2, "contrast": "rg-lcm − lcm",
           **lcm._delta_fields("acc", same, same)}
    assert row["acc_verdict"] == "no measurable difference at n=6"
    (claim,) = lcm.claims([row], [1, 2])
    assert claim["verdict"].startswith("not shown") and "RG-LCM beats plain LCM" in claim["variant"]


def test_cli_student_of_another_base_model_exits_2_and_writes_nothing(tmp_path, capsys):
    """The shipped shapes-sd student on tiny-arch: generate and bench lcm refuse in one line, nothing written."""
    from backend.__main__ import main
    from backend.bench.docs import FRAGMENTS

    variant = json.dumps({"model": "tiny-arch", "scheduler": "lcm", "steps": 2,
                          "consistency": {"checkpoint": "assets/rg-lcm-lora"}})
    fragments = sorted((FRAGMENTS / "lcm").glob("*"))
    for argv in (["generate", "--variant", variant, "--prompt", "a", "--out", str(tmp_path / "x.png")],
                 ["bench", "lcm", "--model", "tiny-arch", "--cache", "assets", "--students", "rg-lcm-lora",
                  "--n", "2", "--steps", "2", "--repeats", "1"]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "distilled from base model 'shapes'" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.png").exists() and sorted((FRAGMENTS / "lcm").glob("*")) == fragments


def test_a_student_implies_the_steps_it_was_shipped_for(tmp_path):
    """The workbench's RG-LCM column takes its step count from the student's metadata (``recommended_steps``,
    set when it is shipped), else 4; never more than the student's ``max_steps``."""
    import json
    import shutil

    from backend.methods.consistency.model import META, implied_settings

    assert implied_settings("assets/rg-lcm-lora") == {"scheduler": "lcm", "steps": 2, "guidance": 1.0}
    student = tmp_path / "student"
    shutil.copytree("assets/rg-lcm-lora", student)
    meta = json.loads((student / META).read_text())
    for recommended, max_steps, expected in ((None, 20, 4), (8, 20, 8), (8, 6, 6)):
        meta.pop("recommended_steps", None)
        if recommended:
            meta["recommended_steps"] = recommended
        meta["max_steps"] = max_steps
        (student / META).write_text(json.dumps(meta))
        assert implied_settings(str(student))["steps"] == expected
