"""``bench quant --grid``: where PTQ breaks, over weight bits × activation bits × layer policy, each setting paired
against FP on the same prompts and seeds (bootstrap 95% intervals); optionally how much of a breaking setting's
accuracy drop EfficientDM recovers.

A setting *breaks* when PTQ's paired prompt-accuracy drop vs FP is at least ``BREAK_POINTS`` points and its 95%
interval excludes 0. The heat-map of the drops (``backend.reports.plots.fig_quant_grid``) is written as HTML
next to the bench page.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

# layer policies (QuantConfig keys): the paper's (8-bit first/last layers and time embedding, FP skip and
# downsample convs), Speedlab's default (those convs at W8A8), and every Conv2d/Linear at the target bits
POLICIES = {
    "paper": {"first_last_8bit": True, "quantize_skip": "fp", "quantize_downsample": "fp"},
    "default": {},
    "all-same": {"first_last_8bit": False, "quantize_skip": "same", "quantize_downsample": "same"},
}
BREAK_POINTS = 10.0


def parse_bits(text: str, flag: str) -> list[int]:
    """A comma list of bit-widths in 2..8; ValueError naming the bad item."""
    out = []
    for item in (t.strip() for t in str(text).split(",") if t.strip()):
        if not item.isdigit() or not 2 <= int(item) <= 8:
            raise ValueError(f"{flag} {item!r} is not allowed; allowed: whole numbers 2 to 8, comma-separated")
        out.append(int(item))
    return list(dict.fromkeys(out))


def parse_policies(text: str) -> list[str]:
    out = [t.strip() for t in str(text).split(",") if t.strip()]
    for p in out:
        if p not in POLICIES:
            raise ValueError(f"--policies {p!r} is not allowed; allowed: {', '.join(POLICIES)}")
    return list(dict.fromkeys(out))


def settings(weights: list[int], acts: list[int], policies: list[str]) -> list[tuple[int, int, str]]:
    grid = [(w, a, p) for p in policies for w in weights for a in acts]
    if not grid:
        raise ValueError("the grid has no valid setting (empty --weights, --acts or --policies); allowed: e.g. "
                         "--weights 2,3,4,8 --acts 3,4,6,8 --policies paper,all-same")
    return grid


AT_CHOICES = ("weights", "mildest", "all")


def parse_at(text: str, grid: list[tuple[int, int, str]]) -> str | list[tuple[int, int, str]]:
    """--efficientdm-at: "weights", "mildest", "all", or explicit W<w>A<a>:<policy> settings of the grid."""
    text = str(text).strip()
    if text in AT_CHOICES:
        return text
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        bits, _, policy = item.partition(":")
        w, _, a = bits.upper().lstrip("W").partition("A")
        setting = (int(w), int(a), policy) if w.isdigit() and a.isdigit() else None
        if setting not in grid:
            raise ValueError(f"--efficientdm-at {item!r} is not allowed; allowed: {', '.join(AT_CHOICES)}, or "
                             "settings of the grid such as W3A4:all-same")
        out.append(setting)
    return out


def _mildest_per_policy(rows: list[dict]) -> list[dict]:
    mildest: dict[str, dict] = {}
    for r in rows:
        best = mildest.get(r["policy"])
        if best is None or r["prompt_accuracy_delta"]["delta"] > best["prompt_accuracy_delta"]["delta"]:
            mildest[r["policy"]] = r
    return list(mildest.values())


def efficientdm_settings(rows: list[dict], at: str | list[tuple[int, int, str]]) -> list[dict]:
    """The PTQ rows EfficientDM fine-tunes, all breaking ones. "weights": per policy, the smallest drop among the
    breaks at the grid's widest activations (accuracy lost to the weights, which the LoRA changes); "mildest":
    per policy, the smallest drop of any break; "all"; or the listed settings."""
    broken = [r for r in rows if r.get("ptq_breaks")]
    if at == "all":
        return broken
    if at == "weights":
        widest = max((r["act_bits"] for r in rows if "act_bits" in r), default=None)
        return _mildest_per_policy([r for r in broken if r["act_bits"] == widest])
    if at == "mildest":
        return _mildest_per_policy(broken)
    return [r for r in broken if (r["weight_bits"], r["act_bits"], r["policy"]) in at]


def breaks(delta: dict | None) -> bool:
    """A paired accuracy delta that is a significant drop of at least BREAK_POINTS points."""
    return bool(delta and delta.get("ci") and delta["delta"] <= -BREAK_POINTS / 100 and delta["ci"][1] < 0)


def recovery(fp: np.ndarray, ptq: np.ndarray, tuned: np.ndarray) -> dict:
    """How much of PTQ's accuracy drop a fine-tune recovers, from per-prompt verdicts (1 correct, 0 not):
    ``recovered`` (tuned − PTQ, paired, points) and ``recovered_fraction`` of the drop FP − PTQ."""
    from backend.metrics.paired import paired_delta

    gained = paired_delta(tuned, ptq, unit=" points", scale=100)
    drop = float(np.mean(fp) - np.mean(ptq))
    return {"recovered": gained, "recovered_fraction": gained["delta"] / drop if drop > 0 else None}


def html_path(model: str, device: str) -> Path:
    from backend.bench.docs import DOCS, _slug

    return DOCS / f"bench-quant-grid--{_slug(Path(model).name)}--{device}.html"


def write_html(rows: list[dict], path: Path) -> Path:
    from backend.reports.plots import fig_quant_grid

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig_quant_grid(rows).write_html(tmp, include_plotlyjs="cdn")
    tmp.replace(path)
    return path


def run_grid(model: str, prompts: list[str], seeds: list[int], grid: list[tuple[int, int, str]], steps: int = 50,
             efficientdm_minutes: float = 0.0, work: str | Path = ".cache/bench-quant", seed: int = 0,
             efficientdm_at: str | list[tuple[int, int, str]] = "weights") -> list[dict]:
    """An FP row, a PTQ row per setting (paired quality vs FP, packed size, ``ptq_breaks``) and, with
    ``efficientdm_minutes`` > 0, an EfficientDM row per breaking setting chosen by ``efficientdm_at`` (its
    recovery of PTQ's drop)."""
    from backend.methods.quant.config import QuantConfig
    from backend.metrics import quality
    from backend.models import is_random_weights, load_pipeline
    from backend.runs.runner import run_variant
    from backend.variant import Variant

    if efficientdm_minutes < 0:
        raise ValueError(f"--efficientdm-minutes {efficientdm_minutes} is out of range; allowed: ≥ 0")
    base_pipe = load_pipeline(model)
    judged = not is_random_weights(base_pipe) and quality.is_shapes_prompts(prompts)
    if judged:
        quality.require_quality_model(base_pipe)
    label = f"{model} (grid)"
    fp_variant = Variant.from_dict({"model": model, "scheduler": "ddim", "steps": steps, "name": "fp"})

    def images_of(variant: Variant):
        result = run_variant(variant, prompts, seeds, measure_macs=False, measure_memory=False)
        return result.images, result.metrics["model_size_mb"]

    def verdicts(images) -> np.ndarray:
        return quality.judge_verdicts(quality.as_8bit(images), prompts)["prompt"].astype(float)

    def versus_fp(images) -> dict:
        # random weights have nothing to judge: a non-Shapes text keeps paired_quality to PSNR/SSIM
        q = quality.paired_quality(images, fp_images, prompts if judged else ["(not judged)"] * len(prompts))
        keys = ("prompt_accuracy_delta", "psnr_vs_baseline", "psnr_vs_baseline_ci", "ssim_vs_baseline",
                "ssim_vs_baseline_ci")
        return {k: q.get(k) for k in keys}

    fp_images, fp_size = images_of(fp_variant)
    fp_v = verdicts(fp_images) if judged else None
    rows = [{"model": label, "method": "fp", "setting": "FP", "prompt_accuracy": None if fp_v is None else
             float(fp_v.mean()), "model_size_mb": fp_size, "n": len(prompts)}]
    print(f"fp: {rows[-1]}", file=sys.stderr)
    ptq_verdicts = {}
    for w, a, policy in grid:
        quant = {"method": "ptq", "weight_bits": w, "act_bits": a, **POLICIES[policy]}
        images, size = images_of(Variant.from_dict({**fp_variant.to_dict(), "name": f"ptq-w{w}a{a}-{policy}",
                                                    "quant": quant}))
        v = verdicts(images) if judged else None
        row = {"model": label, "method": "ptq", "setting": f"W{w}A{a} {policy}", "weight_bits": w, "act_bits": a,
               "policy": policy, "prompt_accuracy": None if v is None else float(v.mean()), **versus_fp(images),
               "model_size_mb": size}
        row["ptq_breaks"] = breaks(row["prompt_accuracy_delta"])
        rows.append(row)
        print(f"ptq W{w}A{a} {policy}: accuracy {row['prompt_accuracy']}, psnr {row['psnr_vs_baseline']:.2f} dB, "
              f"breaks: {row['ptq_breaks']}", file=sys.stderr)
        ptq_verdicts[row["setting"]] = v
    if efficientdm_minutes > 0 and judged:
        for row in efficientdm_settings(rows, efficientdm_at):
            w, a, policy = row["weight_bits"], row["act_bits"], row["policy"]
            quant = QuantConfig.from_dict({"method": "ptq", "weight_bits": w, "act_bits": a, **POLICIES[policy]})
            rows.append(_efficientdm_row(base_pipe, fp_variant, quant, policy, row, efficientdm_minutes, Path(work),
                                         seed, images_of, verdicts, versus_fp, fp_v, ptq_verdicts[row["setting"]]))
    broken = [r["setting"] for r in rows if r.get("ptq_breaks")]
    rows.append({"model": label, "method": "summary", "ptq_breaks_at": broken or "none",
                 "break_rule": f"paired prompt-accuracy drop vs FP ≥ {BREAK_POINTS:g} points with its 95% interval "
                               "excluding 0" + ("" if judged else " (not judged: random weights)")})
    return rows


def _efficientdm_row(base_pipe, fp_variant, quant, policy: str, ptq_row: dict, minutes: float, work: Path, seed: int,
                     images_of, verdicts, versus_fp, fp_v, ptq_v) -> dict:
    from backend.core import JobControl
    from backend.methods.quant import FinetuneConfig
    from backend.methods.quant.checkpoint import checkpoint_size_mb
    from backend.methods.quant.train import finetune, progress_bar
    from backend.variant import Variant

    w, a = quant.weight_bits, quant.act_bits
    out = grid_checkpoint(work, w, a, policy, minutes, seed)
    ft = FinetuneConfig.from_dict({"method": "efficientdm", "weight_bits": w, "act_bits": a, "minutes": minutes,
                                   "seed": seed})
    # a finished fine-tune of this very setting is reused (resuming it trains no further); a partial one continues
    bar, on_progress = progress_bar(ft, f"efficientdm {ptq_row['setting']}")
    try:
        result = finetune(base_pipe, ft, out, job=JobControl(on_progress=on_progress), quant=quant, resume=True)
    finally:
        bar.close()
    result.pop("student")
    images, _ = images_of(Variant.from_dict({**fp_variant.to_dict(), "name": f"efficientdm-w{w}a{a}-{policy}",
                                             "quant": {"checkpoint": str(out)}}))
    v = verdicts(images)
    row = {"model": ptq_row["model"], "method": "efficientdm", "setting": ptq_row["setting"], "weight_bits": w,
           "act_bits": a, "policy": policy, "prompt_accuracy": float(v.mean()), **versus_fp(images),
           "model_size_mb": checkpoint_size_mb(out), "finetune_minutes": result["minutes"],
           "finetune_iters": result["iters"], "finetune_loss": result["loss"], **recovery(fp_v, ptq_v, v)}
    print(f"efficientdm {row['setting']}: accuracy {row['prompt_accuracy']}, recovered "
          f"{row['recovered']['verdict']}", file=sys.stderr)
    return row


def grid_checkpoint(work: str | Path, w: int, a: int, policy: str, minutes: float, seed: int) -> Path:
    """Where the grid keeps EfficientDM's checkpoint of a setting (named by everything that decides it)."""
    return Path(work) / f"grid-efficientdm-w{w}a{a}-{policy}-{minutes:g}min-seed{seed}"


def run(args: argparse.Namespace) -> list[dict]:
    from backend.bench.docs import device_label
    from backend.runs.runner import environment
    from backend.world.prompts import eval_prompts

    grid = settings(parse_bits(args.weights, "--weights"), parse_bits(args.acts, "--acts"),
                    parse_policies(args.policies))
    model = args.model or "shapes"
    prompts = eval_prompts(args.set, args.n)
    seeds = [args.seed + i for i in range(len(prompts))]
    at = parse_at(args.efficientdm_at, grid)
    rows = run_grid(model, prompts, seeds, grid, args.steps, args.efficientdm_minutes, args.work, args.seed, at)
    path = Path(args.html) if args.html else html_path(model, device_label(environment()))
    print(f"heat-map written to {write_html(rows, path)}", file=sys.stderr)
    return rows
