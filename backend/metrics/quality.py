"""Quality metrics: judge accuracy, FD-Shapes, reward, PSNR/SSIM against a baseline, optional CLIP score.

Images are float arrays N×H×W×3 in [0, 1] (what ``backend.runs.build.generate`` returns).
The judge and the reward model are separate networks (see backend/world/evaluators.py):
every quality metric uses the judge; only reward-guided training may optimise the reward.
"""

from __future__ import annotations

import math
import random
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from scipy import linalg

from backend.world.evaluators import Judge, RewardNet, scene_targets
from backend.world.prompts import parse_caption
from backend.world.shapes import IMAGE_SIZE, N_CELLS, Scene, render

EVALUATORS = Path(__file__).resolve().parents[2] / "assets" / "evaluators"
ATTRIBUTES = ("shape", "color", "size", "position", "count")


class QualityUnavailable(ValueError):
    """A quality metric that cannot be computed for this model or these prompts."""


@lru_cache(maxsize=2)
def _load(name: str) -> torch.nn.Module:
    path = EVALUATORS / f"{name}.safetensors"
    if not path.exists():
        raise QualityUnavailable(f"the {name} weights are missing at {path}; "
                                 "train them with python -m backend.world.train")
    net = Judge() if name == "judge" else RewardNet()
    net.load_state_dict(load_file(path))
    return net.eval().requires_grad_(False)


def judge() -> Judge:
    return _load("judge")


def reward_model() -> RewardNet:
    return _load("reward")


def require_quality_model(pipe) -> None:
    """QualityUnavailable for random-weight architectures (their images mean nothing)."""
    from backend.models import is_random_weights

    if is_random_weights(pipe):
        raise QualityUnavailable(f"model {pipe.speedlab_source!r} has random weights: it is for speed measurements "
                                 "only, quality metrics are refused")


def _scenes(prompts: list[str]) -> list[Scene]:
    try:
        return [parse_caption(p) for p in prompts]
    except ValueError as exc:
        raise QualityUnavailable(f"judge metrics need Shapes-world prompts: {exc}") from exc


def _to_judge_input(images) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32) if not torch.is_tensor(images) else images.float()
    if x.shape[-1] == 3:  # N×H×W×3 -> N×3×H×W
        x = x.permute(0, 3, 1, 2)
    if x.shape[-1] != IMAGE_SIZE or x.shape[-2] != IMAGE_SIZE:
        x = torch.nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True)
    return x * 2 - 1


@torch.no_grad()
def judge_metrics(images, prompts: list[str]) -> dict:
    """prompt_accuracy (every cell right, GenEval-style) and attr_accuracy per attribute."""
    scenes = _scenes(prompts)
    logits = [judge()(x) for x in _to_judge_input(images).split(100)]
    pred = {k: torch.cat([lg[k] for lg in logits]).argmax(-1) for k in ("shape", "color", "size")}
    tgt = scene_targets(scenes)
    has_obj = tgt["shape"] > 0
    n_obj = has_obj.sum().clamp(min=1)
    shape_ok = pred["shape"] == tgt["shape"]
    color_ok = (pred["color"] == tgt["color"]) | ~has_obj
    size_ok = (pred["size"] == tgt["size"]) | ~has_obj
    placed = (pred["shape"] > 0) & has_obj
    attr = {
        "shape": float((shape_ok & has_obj).sum() / n_obj),
        "color": float((placed & color_ok).sum() / n_obj),
        "size": float((placed & size_ok).sum() / n_obj),
        "position": float(placed.sum() / n_obj),
        "count": float(((pred["shape"] > 0).sum(1) == has_obj.sum(1)).float().mean()),
    }
    correct = (shape_ok & color_ok & size_ok).all(dim=1)
    return {"prompt_accuracy": float(correct.float().mean()), "attr_accuracy": attr}


@torch.no_grad()
def judge_features(images) -> np.ndarray:
    return torch.cat([judge().features(x) for x in _to_judge_input(images).split(100)]).double().numpy()


def real_renders(prompts: list[str], seed: int = 0) -> np.ndarray:
    """Renders of the scenes the prompts describe, as float images in [0, 1]."""
    rng = random.Random(seed)
    return np.stack([render(s, rng) for s in _scenes(prompts)]).astype(np.float32) / 255.0


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def fd_shapes(images, prompts: list[str], seed: int = 0) -> float:
    """Fréchet distance in the judge's feature space to real renders of the same prompts (FID analogue)."""
    return frechet_distance(judge_features(images), judge_features(real_renders(prompts, seed)))


def reward(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Differentiable per-image reward: log-probability of the prompt's cell attributes under the reward model.

    images: N×3×H×W (or N×H×W×3) in [0, 1]; gradients flow back to them.
    """
    tgt = scene_targets(_scenes(prompts))
    logits = reward_model()(_to_judge_input(images))
    score = 0
    for key in ("shape", "color", "size"):
        logp = torch.log_softmax(logits[key], -1)
        t = tgt[key].to(logp.device)
        picked = logp.gather(-1, t.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        score = score + (picked * (t >= 0)).sum(-1)
    return score / N_CELLS


def psnr_ssim(images, baseline) -> tuple[float, float]:
    """PSNR (dB, of the pooled MSE: infinite iff identical) and mean SSIM of images vs same-seed baseline."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    a = torch.as_tensor(np.asarray(images), dtype=torch.float64).permute(0, 3, 1, 2)
    b = torch.as_tensor(np.asarray(baseline), dtype=torch.float64).permute(0, 3, 1, 2)
    mse = float(((a - b) ** 2).mean())
    psnr = math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
    ssim = float(structural_similarity_index_measure(a, b, data_range=1.0))
    return psnr, ssim


def clip_score(images, prompts: list[str], model: str = "openai/clip-vit-base-patch16") -> float:
    """CLIP score with locally available CLIP weights; QualityUnavailable when they are not on disk."""
    from backend.metrics.scorers import ClipScorer

    scorer = ClipScorer("clip_score", repo=model)
    reason = scorer.unavailable()
    if reason:
        raise QualityUnavailable(f"clip_score unavailable: CLIP weights {model!r} are not available locally "
                                 "(not in the Hugging Face cache; nothing is downloaded)")
    return scorer(images, prompts)


def is_shapes_prompts(prompts: list[str]) -> bool:
    try:
        _scenes(prompts)
        return True
    except QualityUnavailable:
        return False


def quality_metrics(images, prompts: list[str], baseline=None, seed: int = 0) -> dict:
    """Every quality metric that applies: judge metrics, fd_shapes and reward for Shapes-world prompts,
    psnr/ssim against a baseline, clip_score otherwise when CLIP weights are local."""
    out: dict = {}
    if is_shapes_prompts(prompts):
        out.update(judge_metrics(images, prompts))
        out["fd_shapes"] = fd_shapes(images, prompts, seed)
        with torch.no_grad():
            out["reward"] = float(reward(torch.as_tensor(np.asarray(images)), prompts).mean())
    else:
        try:
            out["clip_score"] = clip_score(images, prompts)
        except QualityUnavailable as exc:
            out["clip_score"], out["clip_score_unavailable"] = None, str(exc)
    if baseline is not None:
        out["psnr_vs_baseline"], out["ssim_vs_baseline"] = psnr_ssim(images, baseline)
    return out


__all__ = [
    "ATTRIBUTES", "QualityUnavailable", "clip_score", "fd_shapes", "frechet_distance", "judge",
    "judge_metrics", "psnr_ssim", "quality_metrics", "real_renders", "require_quality_model", "reward",
    "reward_model",
]
