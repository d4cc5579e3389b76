"""The embedded model's quality bar: VAE PSNR, evaluator accuracy, shapes-sd prompt accuracy and KID.

Every row: ``value`` and ``value_ci``, its bootstrap 95% interval over the renders or prompts it averages
(backend.metrics.paired); KID rows carry ``kid_shapes_ci`` beside the real-vs-real floor."""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

from backend.metrics import quality
from backend.metrics.paired import bootstrap_interval
from backend.models import load_pipeline
from backend.runs.build import build_pipeline
from backend.sampling import generate
from backend.variant import Variant
from backend.world.prompts import eval_prompts
from backend.world.shapes import COLORS, POSITIONS, SHAPES, Scene, ShapeObject, render, to_tensor_range
from backend.world.train import evaluator_hits, vae_psnr_per_image, vae_round_trip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=200, help="prompts per set (default 200)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance (default: the model's)")


@torch.no_grad()
def vae_shape_recall(vae, shape: str, size: str = "small", n: int = 100) -> np.ndarray:
    """Per render (1.0 / 0.0): whether the judge still reads the render's shape after a VAE round trip (encode, decode):
    the ceiling the VAE puts on any U-Net's accuracy for that shape."""
    rng = random.Random(5_000_000)
    scenes = [Scene((ShapeObject(shape, rng.choice(list(COLORS)), size, rng.choice(list(POSITIONS.values()))),))
              for _ in range(n)]
    x = to_tensor_range(np.stack([render(sc, rng) for sc in scenes]))
    rec = vae_round_trip(vae, x)
    pred = quality.judge()(rec)["shape"].argmax(-1)
    return np.array([int(pred[i, sc.objects[0].cell_index]) == SHAPES.index(shape) + 1
                     for i, sc in enumerate(scenes)], dtype=float)


def _row(check: str, per_item: np.ndarray, **extra) -> dict:
    """One check: the mean of its per-item values with their bootstrap 95% interval."""
    return {"check": check, "value": float(np.mean(per_item)), "value_ci": bootstrap_interval(per_item, np.mean),
            **extra}


def run(args: argparse.Namespace) -> list[dict]:
    if args.n < 1 or args.steps < 1:
        raise ValueError(f"--n {args.n} / --steps {args.steps} is not allowed; allowed: ≥ 1")
    vae = load_pipeline("shapes").vae
    rows = [
        _row("vae_psnr_db (512 held-out renders)", vae_psnr_per_image(vae)),
        _row("judge exact match (2000 held-out renders)", evaluator_hits(quality.judge())),
        _row("reward model exact match (2000 held-out renders)", evaluator_hits(quality.reward_model())),
    ]
    rows += [_row(f"judge reads a small {shape} after a VAE round trip (100 renders)", vae_shape_recall(vae, shape))
             for shape in SHAPES]
    variant = Variant.from_dict({"model": "shapes", "steps": args.steps,
                                 **({"guidance": args.guidance} if args.guidance is not None else {})})
    pipe = build_pipeline(variant)
    for set_name in ("single", "two", "compositional", "hard"):
        prompts = eval_prompts(set_name, args.n)
        images = np.concatenate([generate(pipe, variant, prompts[i:i + 50], list(range(i, min(i + 50, args.n))))
                                 for i in range(0, args.n, 50)])
        verdicts = quality.judge_verdicts(images, prompts)
        m = quality.metrics_of_verdicts(verdicts, prompts)
        noise = np.random.default_rng(0).random(images.shape).astype(np.float32)
        kid = quality.kid_shapes(images, prompts, seed=1)
        rows.append(_row(f"shapes-sd {set_name} set, {args.n} prompts, {args.steps} DDIM steps (prompt accuracy)",
                         verdicts["prompt"], **{f"attr_{k}": v for k, v in m["attr_accuracy"].items()},
                         **kid, kid_noise_vs_real=quality.kid_shapes(noise, prompts, seed=1)["kid_shapes"]))
    return rows
