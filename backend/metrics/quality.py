"""Quality metrics: judge accuracy, FD-Shapes, reward, PSNR/SSIM against a baseline, optional CLIP score.

Images are float arrays N×H×W×3 in [0, 1] (what ``backend.runs.build.generate`` returns).
The judge and the reward model are separate networks (see backend/world/evaluators.py):
every quality metric uses the judge; only reward-guided training may optimise the reward.
"""

from __future__ import annotations

import math
import random
from functools import lru_cache

import numpy as np
import torch
from safetensors.torch import load_file
from scipy import linalg

from backend.metadata import pipeline_info
from backend.metrics.pixels import QualityUnavailable, as_8bit, paired_pixels, psnr_ssim
from backend.paths import ASSETS
from backend.world.evaluators import Judge, RewardNet, scene_targets
from backend.world.prompts import parse_caption
from backend.world.shapes import IMAGE_SIZE, N_CELLS, Scene, render

EVALUATORS = ASSETS / "evaluators"
ATTRIBUTES = ("shape", "color", "size", "position", "count")


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
        raise QualityUnavailable(f"model {pipeline_info(pipe).source!r} has random weights: it is for speed "
                                 "measurements only, quality metrics are refused")


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
def judge_verdicts(images, prompts: list[str], scenes: list[Scene] | None = None) -> dict[str, np.ndarray]:
    """Per image: "prompt" (every cell right, GenEval-style) and each attribute of ATTRIBUTES (share of the
    prompt's objects with it right; "count": the number of objects right), as float arrays of length N.
    ``scenes``: the prompts' parsed scenes when the caller has them."""
    scenes = _scenes(prompts) if scenes is None else scenes
    logits = [judge()(x) for x in _to_judge_input(images).split(100)]
    pred = {k: torch.cat([lg[k] for lg in logits]).argmax(-1) for k in ("shape", "color", "size")}
    tgt = scene_targets(scenes)
    has_obj = tgt["shape"] > 0
    n_obj = has_obj.sum(1).clamp(min=1)
    shape_ok = pred["shape"] == tgt["shape"]
    color_ok = (pred["color"] == tgt["color"]) | ~has_obj
    size_ok = (pred["size"] == tgt["size"]) | ~has_obj
    placed = (pred["shape"] > 0) & has_obj
    out = {
        "prompt": (shape_ok & color_ok & size_ok).all(dim=1),
        "shape": (shape_ok & has_obj).sum(1) / n_obj,
        "color": (placed & color_ok).sum(1) / n_obj,
        "size": (placed & size_ok).sum(1) / n_obj,
        "position": placed.sum(1) / n_obj,
        "count": (pred["shape"] > 0).sum(1) == has_obj.sum(1),
    }
    return {k: v.double().numpy() for k, v in out.items()}


def judge_metrics(images, prompts: list[str]) -> dict:
    """prompt_accuracy (every cell right, GenEval-style) and attr_accuracy per attribute."""
    return metrics_of_verdicts(judge_verdicts(images, prompts), prompts)


def metrics_of_verdicts(v: dict[str, np.ndarray], prompts: list[str], scenes: list[Scene] | None = None) -> dict:
    """:func:`judge_metrics` from verdicts already computed by :func:`judge_verdicts` (no second judge pass)."""
    scenes = _scenes(prompts) if scenes is None else scenes
    weights = np.array([len(s.objects) for s in scenes], dtype=float)  # attributes pool over objects
    attr = {k: float((v[k] * weights).sum() / weights.sum()) for k in ("shape", "color", "size", "position")}
    attr["count"] = float(v["count"].mean())
    return {"prompt_accuracy": float(v["prompt"].mean()), "attr_accuracy": attr}


@torch.no_grad()
def judge_features(images) -> np.ndarray:
    return torch.cat([judge().features(x) for x in _to_judge_input(images).split(100)]).double().numpy()


def real_renders(prompts: list[str], seed: int = 0) -> np.ndarray:
    """Renders of the scenes the prompts describe, as float images in [0, 1]."""
    rng = random.Random(seed)
    return np.stack([render(s, rng) for s in _scenes(prompts)]).astype(np.float32) / 255.0


FEATURE_DIM = 256  # the judge's feature vector
FD_MIN_N = 2 * FEATURE_DIM  # below this the covariance estimates are singular: FD is refused
KID_MIN_N = 20  # KID on random half-size subsets needs at least 10 images per subset
KID_SUBSETS = 100


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance of two Gaussians fitted to feature rows; covariances regularised by eps·I, and
    QualityUnavailable when the result is not finite."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    reg = eps * np.eye(a.shape[1])
    cov_a, cov_b = np.cov(a, rowvar=False) + reg, np.cov(b, rowvar=False) + reg
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    fd = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))
    if not math.isfinite(fd):
        raise QualityUnavailable("Fréchet distance is not finite for these features")
    return fd


def fd_shapes(images, prompts: list[str], seed: int = 0, features: np.ndarray | None = None) -> float:
    """Fréchet distance in the judge's feature space to real renders of the same prompts (FID analogue).
    Needs n ≥ FD_MIN_N images (twice the feature dimension); QualityUnavailable below. ``features``: the images'
    :func:`judge_features` when the caller has them."""
    if len(prompts) < FD_MIN_N:
        raise QualityUnavailable(f"fd_shapes needs n ≥ {FD_MIN_N} images (2 × the {FEATURE_DIM}-d judge features); "
                                 f"got {len(prompts)}: see kid_shapes")
    features = judge_features(images) if features is None else features
    return frechet_distance(features, judge_features(real_renders(prompts, seed)))


def _kid(fake: np.ndarray, real: np.ndarray, seed: int) -> tuple[float, list[float]]:
    from torchmetrics.image.kid import KernelInceptionDistance

    torch.manual_seed(seed)  # torchmetrics draws the subsets with torch's global generator
    metric = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=KID_SUBSETS,
                                     subset_size=len(fake) // 2)
    metric.update(torch.as_tensor(real), real=True)
    metric.update(torch.as_tensor(fake), real=False)
    mean, std = (float(x) for x in metric.compute())
    return mean, [mean - 1.96 * std, mean + 1.96 * std]


def kid_shapes(images, prompts: list[str], seed: int = 0, features: np.ndarray | None = None) -> dict:
    """Kernel Inception Distance (unbiased polynomial-kernel MMD², torchmetrics) in the judge's feature space
    (centred and scaled by the real renders' statistics) to real renders of the same prompts, with
    its real-vs-real floor: two sets of renders of the same prompts
    that differ only in the render seed. ``kid_shapes_ci`` is the 95% spread of KID over random half-size
    subsets. Real and generated images share prompts, so the floor is below 0 (paired sets are closer than
    independent ones); a value inside the floor's spread means "indistinguishable from real renders at this n".
    ``features``: the images' :func:`judge_features` when the caller has them."""
    n = len(prompts)
    if n < KID_MIN_N:
        raise QualityUnavailable(f"kid_shapes needs n ≥ {KID_MIN_N} images; got {n}")
    import warnings

    real = judge_features(real_renders(prompts, seed))
    # centred and scaled by one number (the real renders' RMS spread): the kernel on raw features (norm ~160)
    # is all noise, and per-dimension scaling blows up near-constant dimensions
    mu, sd = real.mean(0), float(np.sqrt(real.var(0).mean()))
    other = (judge_features(real_renders(prompts, seed + 1)) - mu) / sd
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        fake = judge_features(images) if features is None else features
        kid, ci = _kid((fake - mu) / sd, (real - mu) / sd, seed)
        floor, floor_ci = _kid(other, (real - mu) / sd, seed)
    return {"kid_shapes": kid, "kid_shapes_ci": ci, "kid_shapes_floor": floor, "kid_shapes_floor_ci": floor_ci}


def reward(images: torch.Tensor, prompts: list[str], scenes: list[Scene] | None = None) -> torch.Tensor:
    """Differentiable per-image reward: log-probability of the prompt's cell attributes under the reward model.

    images: N×3×H×W (or N×H×W×3) in [0, 1]; gradients flow back to them.
    """
    tgt = scene_targets(_scenes(prompts) if scenes is None else scenes)
    logits = reward_model()(_to_judge_input(images))
    score = 0
    for key in ("shape", "color", "size"):
        logp = torch.log_softmax(logits[key], -1)
        t = tgt[key].to(logp.device)
        picked = logp.gather(-1, t.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        score = score + (picked * (t >= 0)).sum(-1)
    return score / N_CELLS


def paired_quality(images, baseline, prompts: list[str], seed: int = 0, judged: dict | None = None,
                   baseline_judged: dict | None = None) -> dict:
    """Quality against the same-seed baseline, paired per prompt and seed, with bootstrap 95% intervals:
    psnr/ssim_vs_baseline (+ ``_ci``) and, for Shapes-world prompts, prompt_accuracy_delta,
    attr_accuracy_delta (per attribute) and reward_delta as {"delta", "ci", "n", "verdict"}. ``judged`` /
    ``baseline_judged``: the images' :func:`judged` verdicts when the caller has them (no second judge pass)."""
    from backend.metrics.paired import paired_delta

    out = paired_pixels(images, baseline, seed)
    if is_shapes_prompts(prompts):
        scenes = _scenes(prompts)
        v = judged if judged is not None else judge_per_image(images, prompts, scenes)
        b = baseline_judged if baseline_judged is not None else judge_per_image(baseline, prompts, scenes)
        points = {"scale": 100, "unit": " points"}
        out["prompt_accuracy_delta"] = paired_delta(v["prompt"], b["prompt"], seed=seed, **points)
        out["attr_accuracy_delta"] = {k: paired_delta(v[k], b[k], seed=seed, **points) for k in ATTRIBUTES}
        out["reward_delta"] = paired_delta(v["reward"], b["reward"], seed=seed)
    return out


def judge_per_image(images, prompts: list[str], scenes: list[Scene] | None = None) -> dict[str, np.ndarray]:
    """Everything the evaluators say of each 8-bit image, computed once: the judge's verdicts
    (:func:`judge_verdicts`) and the reward model's score ("reward")."""
    scenes = _scenes(prompts) if scenes is None else scenes
    x = torch.as_tensor(as_8bit(images))
    out = judge_verdicts(x, prompts, scenes)
    with torch.no_grad():
        out["reward"] = reward(x, prompts, scenes).double().numpy()
    return out


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
    """Every quality metric that applies, on the 8-bit images: judge metrics, kid_shapes (with its real-vs-real
    floor), fd_shapes (n ≥ FD_MIN_N only) and reward for Shapes-world prompts, clip_score otherwise when CLIP
    weights are local; against a baseline, the paired metrics of :func:`paired_quality`. A metric that cannot
    be computed is absent and ``<name>_unavailable`` says why."""
    images = as_8bit(images)
    out: dict = {}
    judged = None
    if is_shapes_prompts(prompts):
        scenes = _scenes(prompts)
        judged = judge_per_image(images, prompts, scenes)  # every judge verdict and reward, once per image
        out.update(metrics_of_verdicts(judged, prompts, scenes))
        features = judge_features(images)
        for name, fn in (("kid_shapes", kid_shapes), ("fd_shapes", fd_shapes)):
            try:
                value = fn(images, prompts, seed, features=features)
                out.update(value if isinstance(value, dict) else {name: value})
            except QualityUnavailable as exc:
                out[f"{name}_unavailable"] = str(exc)
        out["reward"] = float(judged["reward"].mean())
    else:
        try:
            out["clip_score"] = clip_score(images, prompts)
        except QualityUnavailable as exc:
            out["clip_score"], out["clip_score_unavailable"] = None, str(exc)
    if baseline is not None:
        out.update(paired_quality(images, baseline, prompts, seed, judged=judged))
    return out


__all__ = [
    "ATTRIBUTES", "QualityUnavailable", "as_8bit", "clip_score", "fd_shapes", "frechet_distance", "judge",
    "judge_metrics", "judge_per_image", "judge_verdicts", "kid_shapes", "metrics_of_verdicts", "paired_quality",
    "psnr_ssim", "quality_metrics",
    "real_renders", "require_quality_model", "reward",
    "reward_model",
]
