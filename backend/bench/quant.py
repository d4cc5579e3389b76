"""EfficientDM vs PTQ vs FP at W8A8 / W4A8 / W4A4 on shapes-sd, and EfficientDM vs full QAT time-to-quality.

    python -m backend bench quant --json                        # the full benchmark (about 2 h on 2 CPU cores)
    python -m backend bench quant --n 20 --minutes 1 --bits W4A4 --qat-minutes 2   # a smoke run

Rows: FP; for each bit-width a PTQ row and an EfficientDM row (fine-tuned for --minutes) with
prompt_accuracy and its paired delta vs FP (``prompt_accuracy_delta``: delta, 95% interval, verdict), kid_shapes
(+ ``_ci``), psnr_vs_baseline (+ ``_ci``; vs FP, same seeds), model_size_mb (the packed checkpoint),
finetune_minutes; then full QAT at the lowest bit-width against EfficientDM as time-to-quality.
Both are evaluated every --eval-every minutes of training on the first --curve-n prompts (curve points:
[minutes, prompt_accuracy, psnr_vs_baseline]) and compared on two targets: prompt_accuracy = FP minus
--target-drop points (or EfficientDM's best, if it never got there), and psnr_vs_baseline = the fidelity
to the FP images EfficientDM has at the end of its budget. Where PTQ already meets the accuracy target
(a model that W4A4 PTQ does not break), only the PSNR comparison says anything, and the row says so.
QAT stops once it meets both targets. All quantization is simulated (fake-quant): sizes are real, speed
is not measured here.

Other modes (one per run): --cost (backend/bench/quant_cost.py: EfficientDM vs full QAT per training
iteration), --grid (quant_grid.py: where PTQ breaks over W x A x layer policy, paired vs FP), --sensitivity
(quant_sensitivity.py: the per-layer sensitivity map).

    python -m backend bench quant --cost --model sd15-arch --json
    python -m backend bench quant --grid --set hard --n 100 --json
    python -m backend bench quant --sensitivity --bits W4A4 --json
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from backend.bench.quant_bits import BITS, parse_bits
from backend.world.prompts import DEFAULT_SET, PROMPT_SETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--model", default=None, help="model (default shapes; --cost: sd15-arch; random-weight "
                        "models give sizes, PSNR and cost only)")
    parser.add_argument("--n", type=int, default=100, help="evaluation prompts (default 100)")
    parser.add_argument("--set", default=DEFAULT_SET, choices=PROMPT_SETS, help=f"prompt set (default {DEFAULT_SET})")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps at evaluation (default 50)")
    parser.add_argument("--bits", default="W8A8,W4A8,W4A4", help=f"comma list of {', '.join(BITS)}")
    parser.add_argument("--minutes", type=float, default=15.0, help="EfficientDM fine-tune budget per bit-width")
    parser.add_argument("--qat-minutes", type=float, default=45.0, help="full-QAT budget (stops at the target)")
    parser.add_argument("--no-qat", action="store_true", help="skip the full-QAT comparison")
    parser.add_argument("--eval-every", type=float, default=1.5, help="minutes of training between curve "
                        "evaluations (time-to-quality)")
    parser.add_argument("--curve-n", type=int, default=None, help="prompts per curve evaluation (default --n)")
    parser.add_argument("--target-drop", type=float, default=5.0, help="target = FP prompt_accuracy minus this "
                        "many points (default 5)")
    parser.add_argument("--qat-lr", type=float, default=None, help="Adam lr of QAT's latent weights (default: "
                        "FinetuneConfig's qat_lr)")
    parser.add_argument("--train-steps", type=int, default=None, help="fine-tune trajectory steps (default: "
                        "FinetuneConfig's)")
    parser.add_argument("--work", default=".cache/bench-quant", help="folder for the checkpoints")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--cost", action="store_true", help="cost of one training iteration, EfficientDM vs full QAT "
                      "at the lowest --bits (trainable parameters, optimizer state, peak memory, s/iteration)")
    mode.add_argument("--grid", action="store_true", help="PTQ over --weights x --acts x --policies, each paired "
                      "vs FP (95%% intervals), names where PTQ's drop is significant and >= 10 points; writes a "
                      "heat-map HTML next to the page")
    mode.add_argument("--sensitivity", action="store_true", help="per-layer sensitivity map at the lowest --bits: "
                      "each layer quantized alone, eps-MSE vs FP on --samples fixed inputs; bar chart HTML")
    parser.add_argument("--samples", type=int, default=4, help="--sensitivity: fixed (x_t, t, text) inputs "
                        "(default 4)")
    parser.add_argument("--weights", default="2,3,4,8", help="--grid: weight bit-widths (default 2,3,4,8)")
    parser.add_argument("--acts", default="3,4,6,8", help="--grid: activation bit-widths (default 3,4,6,8)")
    parser.add_argument("--policies", default="paper,all-same", help="--grid: layer policies, of paper, default, "
                        "all-same (default paper,all-same)")
    parser.add_argument("--efficientdm-minutes", type=float, default=15.0, help="--grid: fine-tune EfficientDM "
                        "this long (training time) at the --efficientdm-at settings where PTQ breaks and report how "
                        "much of the drop it recovers (default 15; 0: off). A finished fine-tune of the same "
                        "setting in --work is reused")
    parser.add_argument("--efficientdm-at", default="weights", help="--grid: which breaking settings EfficientDM "
                        "fine-tunes: weights (per policy, the smallest drop among the breaks at the widest --acts: "
                        "accuracy lost to the weights, which the LoRA changes; default), mildest (per policy, the "
                        "smallest drop of any break), all, or a comma list such as W3A4:all-same")
    parser.add_argument("--html", default=None, help="--grid / --sensitivity: figure file (default "
                        "docs/bench-quant-grid--MODEL--DEVICE.html, docs/bench-quant-sensitivity--MODEL--DEVICE.html)")
    parser.add_argument("--lora-rank", type=int, default=32, help="--cost: EfficientDM's LoRA rank (default 32)")
    parser.add_argument("--cost-batch", type=int, default=None, help="--cost: prompts per step (default: 2 on "
                        "CUDA as in the paper, 1 on the CPU; the U-Net sees 2x with CFG)")
    parser.add_argument("--resolution", type=int, default=None, help="--cost: image size (default the model's: "
                        "256 for sd15-arch)")
    parser.add_argument("--repeats", type=int, default=3, help="--cost: timed training steps per method, in "
                        "interleaved rounds when both students fit in memory (default 3)")
    parser.add_argument("--seed", type=int, default=0)


def first_reaching(curve: list, column: int, goal: float) -> float | None:
    """Minutes of the first curve point whose ``column`` is at least ``goal``."""
    return next((p[0] for p in curve if p[column] is not None and p[column] >= goal), None)

def time_to(name: str, column: int, goal: float, effdm_curve: list, qat_curve: list, qat_budget: float) -> dict:
    """EfficientDM's and QAT's minutes to ``goal`` on one curve column, and their ratio (a bound if unmet)."""
    effdm = first_reaching(effdm_curve, column, goal)
    qat = first_reaching(qat_curve, column, goal)
    if effdm is None:
        ratio = None
    elif qat is None:
        ratio = f">{qat_budget / effdm:.1f}"
    else:
        ratio = round(qat / effdm, 2)
    return {f"efficientdm_minutes_to_{name}": effdm,
            f"qat_minutes_to_{name}": qat if qat is not None else f">{qat_budget:.1f} (not reached)",
            f"{name}_speedup": ratio}


def run(args: argparse.Namespace) -> list[dict]:
    if args.cost:
        from backend.bench.quant_cost import run as run_cost

        return run_cost(args)
    if args.grid:
        from backend.bench.quant_grid import run as run_grid

        return run_grid(args)
    if args.sensitivity:
        from backend.bench.quant_sensitivity import run as run_sensitivity

        return run_sensitivity(args)
    return run_compare(args)


def run_compare(args: argparse.Namespace) -> list[dict]:
    """FP, PTQ and EfficientDM per bit-width, then full QAT vs EfficientDM time-to-quality (the default mode)."""
    from backend.core import JobControl
    from backend.methods.quant import FinetuneConfig
    from backend.methods.quant.checkpoint import checkpoint_size_mb
    from backend.methods.quant.train import finetune, progress_bar
    from backend.metrics import cost, quality
    from backend.metrics.scorers import judge_absent_reason
    from backend.models import is_random_weights, load_pipeline
    from backend.runs.runner import add_quality, run_variant
    from backend.sampling import generate
    from backend.variant import Variant
    from backend.world.prompts import eval_prompts

    args.model = args.model or "shapes"
    bits = parse_bits(args.bits)
    for name in ("minutes", "qat_minutes", "eval_every"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)} must be ≥ 0")
    base_pipe = load_pipeline(args.model)
    random_weights = is_random_weights(base_pipe)
    judge_absent = None if random_weights else judge_absent_reason(base_pipe)
    if random_weights:
        prompts = [p for p in eval_prompts(args.set, args.n)]
    elif judge_absent is not None:  # a model without the Shapes judge: general captions, PSNR vs FP
        from backend.captions import general_captions

        prompts = list(general_captions())[: args.n]
    else:
        quality.require_quality_model(base_pipe)
        prompts = eval_prompts(args.set, args.n)
    seeds = [args.seed + i for i in range(len(prompts))]
    curve_n = min(args.curve_n or len(prompts), len(prompts))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    fp_variant = Variant.from_dict({"model": args.model, "scheduler": "ddim", "steps": args.steps, "name": "fp"})

    def evaluate(variant: Variant, baseline=None) -> tuple[dict, object]:
        result = run_variant(variant, prompts, seeds, measure_macs=False, measure_memory=False)
        add_quality(result, baseline, judge_absent)
        if baseline is not None and "psnr_vs_baseline" not in result.metrics:
            result.metrics["psnr_vs_baseline"], _ = quality.psnr_ssim(result.images, baseline.images)
        return result.metrics, result

    def pick(metrics: dict) -> dict:
        keys = ("prompt_accuracy", "prompt_accuracy_delta", "kid_shapes", "kid_shapes_ci", "psnr_vs_baseline",
                "psnr_vs_baseline_ci", "model_size_mb")
        return {k: metrics.get(k) for k in keys if k in metrics or k in ("psnr_vs_baseline", "model_size_mb")}

    fp_metrics, fp_result = evaluate(fp_variant)
    fp_metrics["model_size_mb"] = cost.model_size_mb(base_pipe.unet)
    rows = [{"method": "fp", "bits": "W32A32", **pick(fp_metrics), "finetune_minutes": 0.0}]
    print(f"fp: {rows[-1]}", file=sys.stderr)
    fp_curve_images = fp_result.images[:curve_n]

    def curve_accuracy(images) -> float | None:
        """prompt_accuracy on the curve prompts (None for random weights)."""
        return None if random_weights else quality.judge_metrics(images[:curve_n], prompts[:curve_n])["prompt_accuracy"]

    def curve_point(student) -> tuple[float | None, float]:
        """(curve_accuracy, psnr_vs_baseline) of a student on the curve prompts."""
        pipe = copy.copy(base_pipe)
        pipe.unet = student
        images = generate(pipe, fp_variant, prompts[:curve_n], seeds[:curve_n])
        return curve_accuracy(images), quality.psnr_ssim(images, fp_curve_images)[0]

    acc_target = None if random_weights else curve_accuracy(fp_curve_images) - args.target_drop / 100.0

    def fine_tune(method: str, w: int, a: int, minutes: float, stop_at: tuple | None):
        out = work / f"{method}-w{w}a{a}"
        if out.exists():
            shutil.rmtree(out)
        raw = {"method": method, "weight_bits": w, "act_bits": a, "minutes": minutes, "seed": args.seed}
        if method == "qat" and args.qat_lr is not None:
            raw["qat_lr"] = args.qat_lr
        if args.train_steps:
            raw["train_steps"] = args.train_steps
        ft = FinetuneConfig.from_dict(raw)
        curve: list[tuple[float, float | None, float]] = []

        def on_eval(student, train_s: float, iters: int) -> bool:
            acc, psnr = curve_point(student)
            curve.append((round(train_s / 60, 3), None if acc is None else round(acc, 4), round(psnr, 3)))
            print(f"  {method} W{w}A{a} @ {train_s / 60:.1f} min ({iters} it): accuracy {acc}, psnr {psnr:.2f} dB",
                  file=sys.stderr)
            return stop_at is not None and all(g is None or (v is not None and v >= g)
                                               for v, g in zip(curve[-1][1:], stop_at, strict=True))

        bar, on_progress = progress_bar(ft, f"{method} W{w}A{a}")
        start = time.perf_counter()
        result = finetune(base_pipe, ft, out, job=JobControl(on_progress=on_progress),
                          on_eval=on_eval if args.eval_every > 0 else None, eval_every_s=args.eval_every * 60)
        bar.close()
        student = result.pop("student")
        if args.eval_every > 0 and (not curve or curve[-1][0] < result["minutes"]):
            on_eval(student, result["elapsed_s"], result["iters"])
        return out, result, curve, time.perf_counter() - start

    lowest = bits[-1]
    effdm_curves, ptq_curve_accuracy = {}, {}
    for label, w, a in bits:
        ptq_variant = Variant.from_dict({**fp_variant.to_dict(), "name": f"ptq-{label}",
                                         "quant": {"method": "ptq", "weight_bits": w, "act_bits": a}})
        metrics, ptq_result = evaluate(ptq_variant, fp_result)
        ptq_curve_accuracy[label] = curve_accuracy(ptq_result.images)
        rows.append({"method": "ptq", "bits": label, **pick(metrics), "finetune_minutes": 0.0})
        print(f"ptq {label}: {rows[-1]}", file=sys.stderr)
        out, result, curve, wall = fine_tune("efficientdm", w, a, args.minutes, None)
        effdm_curves[label] = curve
        variant = Variant.from_dict({**fp_variant.to_dict(), "name": f"efficientdm-{label}",
                                     "quant": {"checkpoint": str(out)}})
        metrics, _ = evaluate(variant, fp_result)
        metrics["model_size_mb"] = checkpoint_size_mb(out)
        rows.append({"method": "efficientdm", "bits": label, **pick(metrics), "finetune_minutes": result["minutes"],
                     "finetune_iters": result["iters"], "finetune_loss": result["loss"], "curve": curve})
        print(f"efficientdm {label}: {rows[-1]}", file=sys.stderr)

    if not args.no_qat:
        label, w, a = lowest
        curve = effdm_curves[label]
        if not curve:
            raise ValueError("--eval-every 0 leaves no curve to compare QAT against; give --eval-every > 0 or --no-qat")
        best_acc = max((p[1] for p in curve if p[1] is not None), default=None)
        acc_goal = None if best_acc is None else (acc_target if best_acc >= acc_target else best_acc)
        psnr_goal = curve[-1][2]
        out, result, qat_curve, wall = fine_tune("qat", w, a, args.qat_minutes, (acc_goal, psnr_goal))
        variant = Variant.from_dict({**fp_variant.to_dict(), "name": f"qat-{label}", "quant": {"checkpoint": str(out)}})
        metrics, _ = evaluate(variant, fp_result)
        metrics["model_size_mb"] = checkpoint_size_mb(out)
        rows.append({"method": "qat", "bits": label, **pick(metrics), "finetune_minutes": result["minutes"],
                     "finetune_iters": result["iters"], "finetune_loss": result["loss"], "curve": qat_curve})
        versus = {"method": "efficientdm_vs_qat", "bits": label, "psnr_target_db": psnr_goal,
                  **time_to("psnr", 2, psnr_goal, curve, qat_curve, result["minutes"])}
        if acc_goal is not None:
            versus.update({"accuracy_target": acc_goal, "ptq_accuracy": ptq_curve_accuracy[label],
                           "ptq_meets_accuracy_target": ptq_curve_accuracy[label] >= acc_goal,
                           **time_to("accuracy", 1, acc_goal, curve, qat_curve, result["minutes"])})
        rows.append(versus)
        print(f"time to quality: {rows[-1]}", file=sys.stderr)
    for row in rows:
        for k, v in list(row.items()):
            if isinstance(v, (float, np.floating)):
                row[k] = round(float(v), 4)
    return rows
