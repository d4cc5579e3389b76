"""The embedded model's quality bar: VAE PSNR, evaluator accuracy, shapes-sd prompt accuracy and FD."""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

from backend.metrics import quality
from backend.models import load_pipeline
from backend.runs.build import build_pipeline
from backend.sampling import generate
from backend.variant import Variant
from backend.world.prompts import eval_prompts
from backend.world.shapes import COLORS, POSITIONS, SHAPES, Scene, ShapeObject, render, to_tensor_range
from backend.world.train import evaluator_accuracy, vae_psnr, vae_round_trip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=200, help="prompts per set (default 200)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance (default: the model's)")


@torch.no_grad()
def vae_shape_recall(vae, shape: str, size: str = "small", n: int = 100) -> float:
    """Share of n renders of one shape whose shape the judge still reads after a VAE round trip (encode, decode):
    the ceiling the VAE puts on any U-Net's accuracy for that shape."""
    rng = random.Random(5_000_000)
    scenes = [Scene((ShapeObject(shape, rng.choice(list(COLORS)), size, rng.choice(list(POSITIONS.values()))),))
              for _ in range(n)]
    x = to_tensor_range(np.stack([render(sc, rng) for sc in scenes]))
    rec = vae_round_trip(vae, x)
    pred = quality.judge()(rec)["shape"].argmax(-1)
    return float(np.mean([int(pred[i, sc.objects[0].cell_index]) == SHAPES.index(shape) + 1
                          for i, sc in enumerate(scenes)]))


def run(args: argparse.Namespace) -> list[dict]:
    vae = load_pipeline("shapes").vae
    rows = [
        {"check": "vae_psnr_db (512 held-out renders)", "value": vae_psnr(vae)},
        {"check": "judge exact match (2000 held-out renders)", "value": evaluator_accuracy(quality.judge())},
        {"check": "reward model exact match (2000 held-out renders)",
         "value": evaluator_accuracy(quality.reward_model())},
    ]
    rows += [{"check": f"judge reads a small {shape} after a VAE round trip (100 renders)",
              "value": vae_shape_recall(vae, shape)} for shape in SHAPES]
    variant = Variant.from_dict({"model": "shapes", "steps": args.steps,
                                 **({"guidance": args.guidance} if args.guidance is not None else {})})
    pipe = build_pipeline(variant)
    for set_name in ("single", "two", "compositional", "hard"):
        prompts = eval_prompts(set_name, args.n)
        images = np.concatenate([generate(pipe, variant, prompts[i:i + 50], list(range(i, min(i + 50, args.n))))
                                 for i in range(0, args.n, 50)])
        m = quality.judge_metrics(images, prompts)
        noise = np.random.default_rng(0).random(images.shape).astype(np.float32)
        kid = quality.kid_shapes(images, prompts, seed=1)
        rows.append({"check": f"shapes-sd {set_name} set, {args.n} prompts, {args.steps} DDIM steps",
                     "value": m["prompt_accuracy"], **{f"attr_{k}": v for k, v in m["attr_accuracy"].items()},
                     **kid, "kid_noise_vs_real": quality.kid_shapes(noise, prompts, seed=1)["kid_shapes"]})
    return rows
