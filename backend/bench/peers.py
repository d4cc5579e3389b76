"""Peers: Speedlab's methods beside what users would pick instead, under one paired protocol.

Groups, each with a Speedlab reference row the peers are compared with: caching (Speedlab DeepCache N=2/3/5 vs the
public DeepCache package's helper at N=3, ToMe 0.3/0.5 and diffusers' PyramidAttentionBroadcast — the only diffusers
cache that runs on a U-Net; on a transformer, Speedlab's block caching vs PAB, FirstBlockCache, FasterCache,
TaylorSeer and MagCache (its ratios calibrated on the model at build), each where its family runs it), int8
(Speedlab W8A8 on real oneDNN kernels vs torchao, optimum-quanto and torch dynamic int8, each with the int8
operators that really ran), few-step (RG-LCM-LoRA 4 steps vs TCD 4 steps on the same student vs Align-Your-Steps 10
steps on the base model; the student is the model's own shipped one, so the group runs on shapes-sd and shapes-dit,
each where its family allows), and torch.compile of the baseline (its first call, which holds the compile, reported
apart).

Per model, every configuration is built once, its first call timed alone (``first_call_s``), then all run in
interleaved rounds (:func:`backend.metrics.cost.timed_rounds`, one image each): ``speedup`` vs the baseline and
``vs_ref_speed`` (reference time / this time, per round) with intervals. Quality: shapes-sd and shapes-dit, the
judge's prompt accuracy on ``--n`` prompts of ``--set`` (paired deltas with bootstrap intervals vs the baseline and
vs the group's reference); sd15-arch and the random-weight transformers (speed and closeness only), PSNR/SSIM vs the
baseline on ``--sd15-n`` images. ``verdict``: speed and quality against the reference, where an interval excludes
parity.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.bench.common import check_positive, comma_choices
from backend.world.prompts import PROMPT_SETS

MODELS = ("shapes", "sd15-arch")
DIT_MODELS = ("shapes-dit", "tiny-pixart", "pixart-arch")  # also accepted: the DiT caches' side of the table
JUDGED = ("shapes", "shapes-dit")  # models the Shapes judge scores (the others: speed and closeness only)
SHIPPED = "shipped"  # consistency.checkpoint placeholder: the model's own shipped student (assets/)
PACKAGE = "deepcache-package"  # the public DeepCache helper (not a Speedlab method: built here; U-Nets only)
# name -> (group, side, Variant sections, steps override or None); a configuration runs on every model whose family
# the registry lets it apply to (backend.runs.build refusals)
CONFIGS: dict[str, tuple[str, str, dict, int | None]] = {
    "baseline": ("baseline", "speedlab", {}, None),
    "speedlab-deepcache-n2": ("cache", "speedlab", {"deepcache": {"interval": 2}}, None),
    "speedlab-deepcache-n3": ("cache", "speedlab", {"deepcache": {"interval": 3}}, None),
    "speedlab-deepcache-n5": ("cache", "speedlab", {"deepcache": {"interval": 5}}, None),
    "deepcache-package-n3": ("cache", "peer", {PACKAGE: {"cache_interval": 3, "cache_branch_id": 0}}, None),
    "tome-0.3": ("cache", "peer", {"tome": {"ratio": 0.3}}, None),
    "tome-0.5": ("cache", "peer", {"tome": {"ratio": 0.5}}, None),
    "diffusers-pab-2": ("cache", "peer", {"diffusers_cache": {"kind": "pab", "skip_range": 2}}, None),
    "diffusers-fbc": ("cache", "peer", {"diffusers_cache": {"kind": "fbc", "threshold": 0.05}}, None),
    "diffusers-faster-2": ("cache", "peer", {"diffusers_cache": {"kind": "faster", "skip_range": 2}}, None),
    "diffusers-taylorseer-3": ("cache", "peer", {"diffusers_cache": {"kind": "taylorseer", "skip_range": 3}}, None),
    "diffusers-magcache": ("cache", "peer", {"diffusers_cache": {"kind": "magcache", "skip_range": 4,
                                                                 "threshold": 0.06}}, None),  # diffusers' K=3, 0.06
    "speedlab-w8a8-real": ("int8", "speedlab", {"quant": {"weight_bits": 8, "act_bits": 8, "kernels": "real",
                                                          "calib_prompts": 4, "calib_steps": 10}}, None),
    "torchao-int8": ("int8", "peer", {"peer_int8": {"backend": "torchao"}}, None),
    "quanto-w8a8": ("int8", "peer", {"peer_int8": {"backend": "quanto"}}, None),
    "torch-dynamic-int8": ("int8", "peer", {"peer_int8": {"backend": "dynamic"}}, None),
    "speedlab-rg-lcm-4": ("few-step", "speedlab", {"consistency": {"checkpoint": SHIPPED}}, 4),
    "tcd-4": ("few-step", "peer", {"consistency": {"checkpoint": SHIPPED}, "schedule": {"kind": "tcd", "eta": 0.3}},
              4),
    "ays-10": ("few-step", "peer", {"schedule": {"kind": "ays"}}, 10),
    "compile": ("compile", "peer", {"compile": {"mode": "default"}}, None),
}
REFERENCE = {"baseline": "baseline", "cache": "speedlab-deepcache-n3", "int8": "speedlab-w8a8-real",
             "few-step": "speedlab-rg-lcm-4", "compile": "baseline"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default=",".join(MODELS), help=f"subset of {', '.join(MODELS)} (default), or "
                        f"the transformers {', '.join(DIT_MODELS)}")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {', '.join(CONFIGS)} (the "
                        "baseline and the reference of each chosen group run too)")
    parser.add_argument("--n", type=int, default=16, help="shapes-sd / shapes-dit prompts for quality (default 16)")
    parser.add_argument("--set", default="hard", choices=PROMPT_SETS, help="shapes prompt set (default hard)")
    parser.add_argument("--seed", type=int, default=0, help="first seed; prompt i uses seed+i")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds (default 3)")
    parser.add_argument("--shapes-steps", type=int, default=20, help="shapes-sd / shapes-dit DDIM steps (default 20)")
    parser.add_argument("--sd15-steps", type=int, default=10, help="sd15-arch (and the random-weight transformers') "
                        "DDIM steps (default 10)")
    parser.add_argument("--sd15-size", type=int, default=128, help="sd15-arch height and width (default 128; the "
                        "random-weight transformers: 64)")
    parser.add_argument("--sd15-n", type=int, default=2, help="random-weight models' images for PSNR/SSIM (default 2)")


def _variant_data(model: str, name: str, args) -> dict:
    _, _, sections, steps = CONFIGS[name]
    data: dict[str, Any] = {"model": model, "name": name, "steps": steps or (args.shapes_steps if model in JUDGED
                                                                           else args.sd15_steps)}
    if model == "sd15-arch":
        data.update(height=args.sd15_size, width=args.sd15_size)
    elif model not in JUDGED:  # a random-weight transformer: a small image (cost, not quality)
        data.update(height=64, width=64)
    if not {"consistency", "schedule"} & set(sections):
        data["scheduler"] = "ddim"
    sections = {k: v for k, v in sections.items() if k != PACKAGE}
    if sections.get("consistency", {}).get("checkpoint") == SHIPPED:
        sections = {**sections, "consistency": {**sections["consistency"], "checkpoint": shipped_student(model)}}
    if model == "sd15-arch":  # calibration at 256×256 costs minutes per evaluation on a loaded CPU: the least
        sections = {k: {**v, "calib_prompts": 1, "calib_steps": 2} if k in ("quant", "peer_int8") else v
                    for k, v in sections.items()}
    return {**data, **sections}


def _build(model: str, name: str, args):
    """(variant, pipeline) of a configuration; the DeepCache package's helper enabled on a private U-Net copy."""
    from backend.runs.build import build_pipeline, shared_weights_unet
    from backend.variant import Variant

    variant = Variant.from_dict(_variant_data(model, name, args))
    pipe = build_pipeline(variant)
    package = CONFIGS[name][2].get(PACKAGE)
    if package is not None:
        try:
            from DeepCache import DeepCacheSDHelper
        except ImportError:
            raise ValueError("the DeepCache package is not installed; install it: pip install DeepCache==0.1.1"
                             ) from None
        pipe.unet = shared_weights_unet(pipe.unet)  # the helper patches forwards of this module tree only
        helper = DeepCacheSDHelper(pipe=pipe)
        helper.set_params(**package)
        helper.enable()
    return variant, pipe


def _interval_verdict(ci: list[float] | None, who: str, what: str) -> str:
    """ci: of reference time / this row's time (above 1: this row is faster)."""
    if ci is None or ci[0] <= 1 <= ci[1]:
        return f"{what}: no measurable difference"
    return f"{what}: {who} {'behind' if ci[0] > 1 else 'ahead'}"


def _delta_verdict(delta: dict | None, who: str, what: str) -> str:
    """delta: this row − the reference (higher = this row better)."""
    if not delta or delta.get("ci") is None or delta["ci"][0] <= 0 <= delta["ci"][1]:
        return f"{what}: no measurable difference"
    return f"{what}: {who} {'behind' if delta['ci'][0] > 0 else 'ahead'}"


def _model_rows(model: str, names: list[str], args) -> list[dict]:
    from backend.metadata import pipeline_info
    from backend.metrics.cost import timed_rounds
    from backend.metrics.paired import median_interval, paired_delta
    from backend.metrics.pixels import psnr_ssim_per_image
    from backend.metrics.quality import judge_verdicts, paired_quality
    from backend.sampling import generate
    from backend.world.prompts import eval_prompts

    shapes = model in JUDGED
    prompts = eval_prompts(args.set, args.n) if shapes else ["a photograph of an astronaut riding a horse",
                                                             "a red sports car on a mountain road"][: args.sd15_n]
    prompts = (prompts * args.sd15_n)[: args.sd15_n] if not shapes else prompts
    seeds = [args.seed + i for i in range(len(prompts))]
    built, rows = {}, {}
    # compile's first call takes minutes here: it runs as its own part, "MODEL (compile)", with its own fragment
    label = f"{model} (compile)" if {CONFIGS[n][0] for n in names} <= {"baseline", "compile"} else model
    for name in names:
        print(f"peers bench: {model}: build {name}", file=sys.stderr)
        t0 = time.perf_counter()
        variant, pipe = _build(model, name, args)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        generate(pipe, variant, prompts[:1], seeds[:1])
        first = time.perf_counter() - t0
        built[name] = (variant, pipe)
        group, side, sections, _ = CONFIGS[name]
        rows[name] = {"model": label, "config": name, "group": group, "side": side,
                      "variant": {k: v for k, v in _variant_data(model, name, args).items() if k != "name"},
                      "steps": variant.steps, "build_s": build_s, "first_call_s": first,
                      "kernels": pipeline_info(pipe).kernels}
    print(f"peers bench: {model}: {args.repeats} interleaved rounds of {len(names)} configurations", file=sys.stderr)
    fns = {n: (lambda v=v, p=p: generate(p, v, prompts[:1], seeds[:1])) for n, (v, p) in built.items()}
    timing = timed_rounds(fns, repeats=args.repeats, warmup=0, baseline="baseline", keep_times=True)
    images = {}
    for name, (variant, pipe) in built.items():
        print(f"peers bench: {model}: quality images of {name} ({len(prompts)} prompts)", file=sys.stderr)
        images[name] = np.concatenate([generate(pipe, variant, [p], [s]) for p, s in zip(prompts, seeds)])
    verdicts = {n: judge_verdicts(images[n], prompts)["prompt"] for n in names} if shapes else {}
    mse = {n: psnr_ssim_per_image(images[n], images["baseline"])[0] for n in names}
    out = []
    for name in names:
        row, t = rows[name], timing[name]
        ref = REFERENCE[row["group"]]
        row.update(latency_s=t["latency_s"], latency_ci=t["latency_ci"], speedup=t["speedup"],
                   speedup_ci=t["speedup_ci"], timing_noisy=t["timing_noisy"])
        if name == "compile":
            row["compile_s"] = max(0.0, row["first_call_s"] - t["latency_s"])
        q = paired_quality(images[name], images["baseline"], prompts, seed=args.seed)
        row["psnr_vs_baseline"], row["ssim_vs_baseline"] = q["psnr_vs_baseline"], q["ssim_vs_baseline"]
        if shapes:
            row["prompt_accuracy"] = float(verdicts[name].mean())
            d = q["prompt_accuracy_delta"]
            row["accuracy_delta_points"] = 100 * d["delta"]
            row["accuracy_delta_ci"] = [100 * x for x in d["ci"]] if d["ci"] else None
        if name == ref or ref not in built:
            row["verdict"] = "reference" if name == ref else "no reference on this model"
            out.append(row)
            continue
        ratio, ratio_ci = median_interval([r / p for r, p in zip(timing[ref]["times_s"], t["times_s"])])
        row["vs_ref"], row["vs_ref_speed"], row["vs_ref_speed_ci"] = ref, ratio, ratio_ci
        who = "Speedlab" if row["side"] == "peer" else "the reference"  # a Speedlab row beside its own reference
        speed = _interval_verdict(ratio_ci, who, "speed")
        if shapes:
            d = paired_delta(verdicts[name], verdicts[ref], seed=args.seed, scale=100, unit=" points")
            row["vs_ref_accuracy_points"] = 100 * d["delta"]
            row["vs_ref_accuracy_ci"] = [100 * x for x in d["ci"]] if d["ci"] else None
            quality = _delta_verdict(d, who, "accuracy")
        else:  # closeness to the baseline: lower per-image MSE is better
            d = paired_delta(-mse[name], -mse[ref], seed=args.seed)
            quality = _delta_verdict(d, who, "closeness to baseline (MSE)")
        row["verdict"] = f"{speed}; {quality} (vs {ref})"
        out.append(row)
    built.clear()
    return out


def shipped_student(model: str) -> str | None:
    """The consistency student shipped for ``model`` (``assets/NAME``, made from it), or None."""
    from backend.tune.space import checkpoints

    found = checkpoints("consistency", model=model)
    return f"assets/{Path(found[0]).name}" if found else None


def applies(model: str, name: str) -> bool:
    """Whether configuration ``name`` runs on ``model``: the DeepCache package on U-Nets, a student only where the
    model has a shipped one, and every method and choice the registry lets apply to the model's family (what the
    pipeline build would refuse)."""
    from backend.methods import registry
    from backend.models import load_pipeline, model_family
    from backend.variant import method_config_class

    sections = CONFIGS[name][2]
    family = model_family(load_pipeline(model))
    if PACKAGE in sections:
        return family in ("sd1", "sd2", "sdxl", "unet")
    if sections.get("consistency", {}).get("checkpoint") == SHIPPED and shipped_student(model) is None:
        return False
    return not any(registry.method(s).refusal(family) or method_config_class(s).from_dict(v).family_refusal(family)
                   for s, v in sections.items())


def run(args) -> list[dict]:
    models = comma_choices(args.models, MODELS + DIT_MODELS, "--models")
    names = comma_choices(args.configs, CONFIGS, "--configs")
    check_positive(args, ("n", "repeats", "shapes_steps", "sd15_steps", "sd15_size", "sd15_n"))
    torch.manual_seed(0)
    rows = []
    for model in models:
        refs = {REFERENCE[CONFIGS[n][0]] for n in names} | {"baseline"}
        chosen = [n for n in CONFIGS if (n in names or n in refs) and applies(model, n)]
        rows += _model_rows(model, chosen, args)
    return rows
