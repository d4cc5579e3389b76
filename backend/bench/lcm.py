"""RG-LCD: the 50-step teacher with CFG vs LCM, RG-LCM (direct reward) and RG-LCM (proxy) at 1, 2, 4, 8 steps.

Same prompts and seeds for every row: prompt_accuracy (the judge, which training never sees), reward,
fd_shapes, hf_energy (share of image spectral power above half the Nyquist frequency: reward hacking
shows up as high-frequency patterns), unet_evals, latency_s (one image end to end, median of --repeats,
all rows timed round by round so background load hits them alike) and speedup vs the teacher, and each
student's training minutes. Students are trained first when they are not in --cache.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from backend.metadata import CONSISTENCY_META_FILE
from backend.world.prompts import DEFAULT_SET, PROMPT_SETS

# Every student: a 20-point DDIM solver grid (skipping step k = 50), which within the 20-minute budget gave
# better 2-step students than the SD recipe's N = 50 (2-step accuracy 0.82-0.85 after 2-8 min vs 0.81 after 12),
# and the lr decayed to 0 over the budget (2-step accuracy swings by ±4 points from one constant-lr step to the next).
COMMON = {"num_ddim_timesteps": 20, "lr_decay": True}
STUDENTS = {  # name -> distillation settings on top of COMMON and the defaults
    "lcm": {"reward": "none", "beta": 0.0},
    "rg-lcm": {"reward": "shapes"},
    "rg-lcm-proxy": {"reward": "shapes", "proxy": True},
}


def step_list(text: str) -> list[int]:
    """'1,2,4,8' -> [1, 2, 4, 8]; argparse.ArgumentTypeError naming the bad entry."""
    limit = COMMON["num_ddim_timesteps"]
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    bad = next((p for p in parts if not p.isdigit() or not 1 <= int(p) <= limit), None) if parts else text
    if bad is not None:
        raise argparse.ArgumentTypeError(f"{text!r}: {bad!r} is not a step count; allowed: comma-separated whole "
                                         f"numbers from 1 to {limit}, e.g. 1,2,4,8")
    return [int(p) for p in parts]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="shapes", help="teacher model (default: the embedded shapes-sd)")
    parser.add_argument("--minutes", type=float, default=20.0, help="training minutes per student (default 20)")
    parser.add_argument("--beta", type=float, default=0.1, help="reward weight β of the RG-LCM students (default "
                        "0.1: with the Shapes reward's log-probability, β = 0.3 and 1 let the reward swamp the "
                        "consistency loss and the 2-step student got worse)")
    parser.add_argument("--n", type=int, default=100, help="number of prompts (default 100)")
    parser.add_argument("--set", default=DEFAULT_SET, choices=PROMPT_SETS, help=f"prompt set (default {DEFAULT_SET})")
    parser.add_argument("--steps", type=step_list, default="1,2,4,8", help="student step counts (default 1,2,4,8)")
    parser.add_argument("--teacher-steps", type=int, default=50, help="teacher DDIM steps (default 50)")
    parser.add_argument("--cache", default=".cache/lcm-students", help="folder of trained students (re-used)")
    parser.add_argument("--students", default=",".join(STUDENTS), help=f"subset of {', '.join(STUDENTS)}")
    parser.add_argument("--repeats", type=int, default=5, help="timed one-image repeats per row (rows interleaved "
                        "round by round)")
    parser.add_argument("--seed", type=int, default=0, help="first seed; prompt i uses seed+i")


def hf_energy(images: np.ndarray, cutoff: float = 0.25) -> float:
    """Mean share of spectral power (grey level, mean removed) above ``cutoff`` cycles/pixel (Nyquist = 0.5)."""
    grey = np.asarray(images, dtype=np.float64).mean(-1)
    grey = grey - grey.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(grey)) ** 2
    fy = np.fft.fftfreq(grey.shape[1])[:, None]
    fx = np.fft.fftfreq(grey.shape[2])[None, :]
    high = np.sqrt(fx**2 + fy**2) > cutoff
    total = power.sum(axis=(1, 2)) + 1e-12
    return float((power[:, high].sum(-1) / total).mean())


def train_student(name: str, args, folder: Path) -> dict:
    """Train one student into ``folder`` unless it is there; its metadata (with train_minutes)."""
    from tqdm import tqdm

    from backend.core import JobControl
    from backend.methods.consistency import DistillConfig, read_meta
    from backend.methods.consistency.distill import distill
    from backend.models import load_pipeline

    if not (folder / CONSISTENCY_META_FILE).is_file():
        settings = {**COMMON, "minutes": args.minutes, "beta": args.beta, **STUDENTS[name]}
        cfg = DistillConfig.from_dict(settings)
        bar = tqdm(total=int(args.minutes * 60), unit="s", desc=f"train {name}", file=sys.stderr)

        def progress(fields: dict) -> None:
            bar.n = min(bar.total, int(fields.get("minutes", 0) * 60))
            bar.set_postfix({k: fields[k] for k in ("step", "loss", "reward") if k in fields}, refresh=False)
            bar.refresh()

        summary = distill(load_pipeline(args.model), cfg, folder, JobControl(on_progress=progress))
        bar.close()
        if summary["status"] != "done":
            raise ValueError(f"training of {name} did not finish: {summary}")
    return read_meta(folder)


def run(args) -> list[dict]:
    from backend.metrics.cost import timed_rounds
    from backend.runs.build import build_pipeline
    from backend.runs.runner import add_quality, run_variant
    from backend.sampling import generate
    from backend.variant import Variant
    from backend.world.prompts import eval_prompts

    steps = step_list(args.steps) if isinstance(args.steps, str) else args.steps
    names = [s.strip() for s in str(args.students).split(",") if s.strip()]
    unknown = [s for s in names if s not in STUDENTS]
    if unknown:
        raise ValueError(f"--students: {unknown[0]!r} is unknown; allowed: {', '.join(STUDENTS)}")
    if args.beta < 0:
        raise ValueError(f"--beta {args.beta} is not allowed; the reward weight must be ≥ 0")
    from backend.metrics.scorers import judge_absent_reason
    from backend.models import load_pipeline

    judge_absent = judge_absent_reason(load_pipeline(args.model))
    if judge_absent is None:
        prompts = eval_prompts(args.set, args.n)
    else:  # a model without the Shapes judge: the built-in general captions, scorers instead of the judge
        from backend.captions import general_captions

        prompts = list(general_captions())[: args.n]
    seeds = [args.seed + i for i in range(len(prompts))]
    cache = Path(args.cache)
    metas = {name: train_student(name, args, cache / name) for name in names}

    teacher = Variant.from_dict({"model": args.model, "name": "teacher", "scheduler": "ddim",
                                 "steps": args.teacher_steps})
    specs = [(f"teacher DDIM {args.teacher_steps} + CFG", teacher, {"train_minutes": None})]
    for name in names:
        for n_steps in steps:
            v = Variant.from_dict({"model": args.model, "name": f"{name}-{n_steps}", "scheduler": "lcm",
                                   "steps": n_steps, "consistency": {"checkpoint": str(cache / name)}})
            specs.append((name, v, {"train_minutes": metas[name].get("train_minutes")}))
    variants = [v for _, v, _ in specs]
    pipes = [build_pipeline(v) for v in variants]  # one per row: quality and timing use the same pipeline

    def measure(label: str, variant: Variant, pipe, extra: dict) -> dict:
        result = run_variant(variant, prompts, seeds, measure_macs=False, measure_memory=False, pipe=pipe)
        add_quality(result, None, judge_absent)
        m = result.metrics
        row = {"variant": label, "steps": variant.steps, **extra}
        for key in ("prompt_accuracy", "reward", "fd_shapes") if judge_absent is None else ("clip_score", "pickscore"):
            row[key] = m.get(key)
        row["hf_energy"] = hf_energy(result.images)
        row["unet_evals"] = m.get("unet_evals")
        return row

    rows = [measure(label, v, p, extra) for (label, v, extra), p in zip(specs, pipes, strict=True)]
    print(f"lcm bench: timing {len(variants)} rows, one image each, interleaved", file=sys.stderr)
    fns = {i: (lambda p=p, v=v: generate(p, v, prompts[:1], seeds[:1]))
           for i, (p, v) in enumerate(zip(pipes, variants, strict=True))}
    timing = timed_rounds(fns, repeats=args.repeats, baseline=0)
    for i, row in enumerate(rows):
        row.update({k: timing[i][k] for k in ("latency_s", "latency_ci", "speedup", "speedup_ci", "timing_noisy")})
    return rows
