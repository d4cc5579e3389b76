"""Metrics on known cases, and the embedded model through the stock diffusers class."""

import math

import numpy as np
import pytest
import torch

from backend.metrics import cost, quality
from backend.world.prompts import prompt_set

needs_evaluators = pytest.mark.skipif(
    not (quality.EVALUATORS / "judge.safetensors").exists(), reason="evaluator weights not in assets/ yet"
)


def _prompts(name: str, n: int) -> list[str]:
    return [s.caption for s in prompt_set(name)[:n]]


def test_psnr_ssim_identical_and_different():
    a = np.random.default_rng(0).random((4, 32, 32, 3)).astype(np.float32)
    psnr, ssim = quality.psnr_ssim(a, a)
    assert psnr == math.inf and ssim == pytest.approx(1.0)
    psnr2, ssim2 = quality.psnr_ssim(np.clip(a + 0.1, 0, 1), a)
    assert 15 < psnr2 < 25 and ssim2 < 1


def test_frechet_distance_known_values():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 4))
    assert quality.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    assert quality.frechet_distance(x, x + 1.0) == pytest.approx(4.0, rel=1e-3)


@needs_evaluators
@pytest.mark.parametrize("set_name", ["single", "two", "compositional"])
def test_judge_on_real_renders(set_name):
    prompts = _prompts(set_name, 120)
    renders = quality.real_renders(prompts, seed=11)
    m = quality.judge_metrics(renders, prompts)
    assert m["prompt_accuracy"] >= 0.99
    assert all(v >= 0.99 for v in m["attr_accuracy"].values())


@needs_evaluators
def test_judge_rejects_wrong_prompts():
    prompts = _prompts("single", 60)
    renders = quality.real_renders(prompts[::-1], seed=1)
    assert quality.judge_metrics(renders, prompts)["prompt_accuracy"] < 0.2


@needs_evaluators
def test_fd_real_real_small_noise_large():
    prompts = _prompts("two", 150)
    real_a = quality.real_renders(prompts, seed=1)
    noise = np.random.default_rng(0).random(real_a.shape).astype(np.float32)
    fd_real = quality.fd_shapes(real_a, prompts, seed=2)
    fd_noise = quality.fd_shapes(noise, prompts, seed=2)
    assert fd_real < 0.05 * fd_noise


@needs_evaluators
def test_reward_is_differentiable_and_prefers_right_images():
    prompts = _prompts("single", 16)
    right = torch.tensor(quality.real_renders(prompts, seed=3)).permute(0, 3, 1, 2).requires_grad_(True)
    wrong = torch.tensor(quality.real_renders(prompts[::-1], seed=3)).permute(0, 3, 1, 2)
    r = quality.reward(right, prompts)
    r.sum().backward()
    assert right.grad is not None and right.grad.abs().sum() > 0
    assert (r.detach() > quality.reward(wrong, prompts)).float().mean() > 0.9


def test_quality_refused_for_non_shapes_prompts():
    with pytest.raises(quality.QualityUnavailable, match="Shapes-world prompts"):
        quality.judge_metrics(np.zeros((1, 64, 64, 3)), ["a photo of a cat"])


def test_clip_score_reports_unavailable_offline():
    out = quality.quality_metrics(np.zeros((1, 64, 64, 3), np.float32), ["a photo of a cat"])
    assert out["clip_score"] is None and "not available locally" in out["clip_score_unavailable"]


def test_cost_counters(tiny_pipe):
    from backend.runs.build import generate
    from backend.runs.variant import Variant

    v = Variant.from_dict({"model": "tiny-arch", "steps": 3, "guidance": 5.0})
    with cost.UnetCallCounter(tiny_pipe.unet) as counter:
        generate(tiny_pipe, v, ["a", "b"], [0, 1])
    assert counter.calls == 3 and counter.per_image(2) == 6  # CFG doubles the rows
    one = cost.count_macs(lambda: generate(tiny_pipe, v, ["a"], [0]))
    two = cost.count_macs(lambda: generate(tiny_pipe, Variant.from_dict({**v.to_dict(), "steps": 6}), ["a"], [0]))
    assert one > 0 and two > one
    lat = cost.measure_latency(lambda: None, repeats=5, warmup=0)
    assert 0 <= lat["latency_s"] <= lat["latency_p90_s"]


def test_shapes_sd_loads_with_stock_class_offline(shapes_available, monkeypatch):
    from diffusers import StableDiffusionPipeline

    from backend.models import SHAPES_DIR

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_DIR, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a small red circle at the top left", num_inference_steps=4, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 64, 64, 3)
    assert sum(f.stat().st_size for f in SHAPES_DIR.rglob("*") if f.is_file()) < 40 * 2**20


def test_interleaved_latency_runs_round_by_round():
    from backend.metrics.cost import interleaved_latency

    calls: list[str] = []
    out = interleaved_latency({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert set(out) == {"a", "b"} and all(v["latency_s"] >= 0 for v in out.values())


@needs_evaluators
def test_vae_shape_recall_is_one_through_a_lossless_vae_and_low_through_a_blurring_one():
    from types import SimpleNamespace

    from backend.bench.world import vae_shape_recall

    def vae(transform):
        return SimpleNamespace(encode=lambda x: SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: x)),
                               decode=lambda z: SimpleNamespace(sample=transform(z)))

    assert vae_shape_recall(vae(lambda z: z), "cross", n=20) == 1.0
    blur = vae(lambda z: torch.nn.functional.avg_pool2d(z, 9, 1, 4, count_include_pad=False))
    assert vae_shape_recall(blur, "cross", n=20) < 0.5
