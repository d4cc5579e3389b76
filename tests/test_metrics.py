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
def test_kid_real_renders_sit_at_the_floor_and_noise_far_above():
    prompts = [s.caption for s in prompt_set("hard")[:100]]
    real = quality.kid_shapes(quality.real_renders(prompts, seed=1), prompts, seed=2)
    lo, hi = real["kid_shapes_floor_ci"]
    assert lo <= real["kid_shapes"] <= hi + (hi - lo)  # another render seed: inside the floor's spread
    noise = np.random.default_rng(0).random((100, 64, 64, 3)).astype(np.float32)
    far = quality.kid_shapes(noise, prompts, seed=2)
    assert far["kid_shapes_ci"][0] > hi + 10 * (hi - lo)


def test_distribution_metrics_refuse_small_n_instead_of_hanging():
    prompts = _prompts("two", 5)
    with pytest.raises(quality.QualityUnavailable, match="kid_shapes needs n"):
        quality.kid_shapes(np.zeros((5, 64, 64, 3)), prompts)
    with pytest.raises(quality.QualityUnavailable, match="fd_shapes needs n"):
        quality.fd_shapes(np.zeros((5, 64, 64, 3)), prompts)


def test_psnr_is_the_same_on_floats_and_on_their_8bit_images():
    rng = np.random.default_rng(1)
    a, b = rng.random((3, 16, 16, 3)), rng.random((3, 16, 16, 3))
    u8 = lambda x: (x * 255).round().astype(np.uint8) / 255.0  # noqa: E731 - what a sweep stores
    assert quality.psnr_ssim(a, b) == quality.psnr_ssim(u8(a), u8(b))


@needs_evaluators
def test_paired_quality_deltas_have_intervals_and_verdicts():
    prompts = _prompts("two", 40)
    renders = quality.real_renders(prompts, seed=1)
    same = quality.paired_quality(renders, renders, prompts)
    assert same["psnr_vs_baseline"] == math.inf and same["prompt_accuracy_delta"]["delta"] == 0
    assert same["prompt_accuracy_delta"]["verdict"] == "no measurable difference at n=40"
    blank = np.ones_like(renders) * renders.mean()
    worse = quality.paired_quality(blank, renders, prompts)["prompt_accuracy_delta"]
    assert worse["delta"] < -0.9 and worse["ci"][1] < 0 and worse["verdict"].startswith("drop of")


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
    from backend.sampling import generate
    from backend.variant import Variant

    v = Variant.from_dict({"model": "tiny-arch", "steps": 3, "guidance": 5.0})
    with cost.UnetCallCounter(tiny_pipe.unet) as counter:
        generate(tiny_pipe, v, ["a", "b"], [0, 1])
    assert counter.calls == 3 and counter.per_image(2) == 6  # CFG doubles the rows
    one = cost.count_macs(lambda: generate(tiny_pipe, v, ["a"], [0]))
    two = cost.count_macs(lambda: generate(tiny_pipe, Variant.from_dict({**v.to_dict(), "steps": 6}), ["a"], [0]))
    assert one > 0 and two > one


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


class FakeClock:
    """A clock that advances by a scripted duration for each timed call (start/stop pairs)."""

    def __init__(self, durations: list[float]):
        self.durations, self.now, self.started = list(durations), 0.0, False

    def __call__(self) -> float:
        if self.started:
            self.now += self.durations.pop(0)
        self.started = not self.started
        return self.now


def test_timed_rounds_interleave_and_report_medians_intervals_and_paired_speedup():
    calls: list[str] = []
    # rounds of (base, fast): the machine slows down in round 2, both alike; the ratio stays 2
    clock = FakeClock([1.0, 0.5, 3.0, 1.5, 1.0, 0.5])
    out = cost.timed_rounds({"base": lambda: calls.append("b"), "fast": lambda: calls.append("f")}, repeats=3,
                            warmup=1, baseline="base", clock=clock)
    assert calls == ["b", "f"] * 4  # one warm-up round, then three interleaved rounds
    assert out["base"]["latency_s"] == 1.0 and out["fast"]["latency_s"] == 0.5
    assert out["fast"]["speedup"] == pytest.approx(2.0) and out["fast"]["speedup_ci"] == pytest.approx([2.0, 2.0])
    lo, hi = out["fast"]["latency_ci"]
    assert lo < 0.5 < hi and out["fast"]["timing_noisy"] is False  # latency varies, the paired ratio does not
    assert out["base"]["speedup"] == 1.0
    one = cost.timed_rounds({"a": lambda: None}, repeats=1, warmup=0, clock=FakeClock([0.2]))
    assert one["a"]["latency_s"] == pytest.approx(0.2) and one["a"]["latency_ci"] is None


def test_timed_rounds_flags_noise_and_refuses_bad_repeats():
    out = cost.timed_rounds({"b": lambda: None, "v": lambda: None}, repeats=3, warmup=0, baseline="b",
                            clock=FakeClock([1.0, 1.0, 1.0, 3.0, 1.0, 0.4]))
    assert out["v"]["timing_noisy"] is True and "timing noisy" in cost.describe_timing(out["v"])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="allowed: a whole number ≥ 1"):
            cost.timed_rounds({"a": lambda: None}, repeats=bad)


def test_paired_delta_bootstrap_interval_of_a_known_sample():
    from backend.metrics.paired import median_interval, paired_delta

    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, 400).astype(float)
    flip = rng.random(400) < 0.2  # the variant loses 20% of the correct answers
    variant = np.where(flip & (base == 1), 0.0, base)
    d = paired_delta(variant, base, scale=100, unit=" points")
    true = float((variant - base).mean())
    assert d["delta"] == pytest.approx(true) and d["ci"][0] < true < d["ci"][1] < 0
    assert d["ci"][1] - d["ci"][0] < 0.08 and d["verdict"].startswith("drop of")
    noise = paired_delta(rng.random(50), rng.random(50))
    assert noise["ci"][0] < 0 < noise["ci"][1] and noise["verdict"] == "no measurable difference at n=50"
    assert paired_delta([1.0], [0.0])["ci"] is None
    med, ci = median_interval([2.0, 2.0, 2.0])
    assert med == 2.0 and ci == pytest.approx([2.0, 2.0])


@needs_evaluators
def test_vae_shape_recall_is_one_through_a_lossless_vae_and_low_through_a_blurring_one():
    from types import SimpleNamespace

    from backend.bench.world import vae_shape_recall

    def vae(transform):
        return SimpleNamespace(encode=lambda x: SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: x)),
                               decode=lambda z: SimpleNamespace(sample=transform(z)))

    assert vae_shape_recall(vae(lambda z: z), "cross", n=20).mean() == 1.0  # per render: 1.0 / 0.0
    blur = vae(lambda z: torch.nn.functional.avg_pool2d(z, 9, 1, 4, count_include_pad=False))
    assert vae_shape_recall(blur, "cross", n=20).mean() < 0.5
