"""Run a variant on prompts × seeds and measure it: images, cost and quality (the design.md metric names)."""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline

from backend.metadata import pipeline_info
from backend.methods.params import MAX_SEED
from backend.metrics import cost, quality
from backend.models import RANDOM_ARCHS, denoiser
from backend.runs.build import build_pipeline
from backend.sampling import generate
from backend.variant import Variant
from backend.world.prompts import DEFAULT_SET, eval_prompts

ProgressFn = Callable[[int, int], None]


@dataclass
class VariantResult:
    variant: Variant
    images: np.ndarray
    prompts: list[str]
    seeds: list[int]
    metrics: dict = field(default_factory=dict)


def run_variant(
    variant: Variant, prompts: list[str], seeds: list[int], batch_size: int = 25, measure_macs: bool = True,
    measure_memory: bool = True, on_progress: ProgressFn | None = None, pipe: DiffusionPipeline | None = None,
) -> VariantResult:
    """Generate every prompt/seed pair and measure the deterministic cost: unet_evals (with
    unet_evals_full / unet_evals_partial), macs_per_image, peak_mem_mb (growth while drawing one image),
    model_size_mb, kernels. Wall-clock time is measured separately, against a baseline: :func:`time_variants`.
    ``pipe``: the variant's pipeline when the caller has built it already."""
    pipe = pipe if pipe is not None else build_pipeline(variant)
    total = len(prompts)
    chunks = []
    with cost.UnetCallCounter(denoiser(pipe)) as counter:
        for start in range(0, total, batch_size):
            end = min(total, start + batch_size)
            chunks.append(generate(pipe, variant, prompts[start:end], seeds[start:end]))
            if on_progress:
                on_progress(end, total)
    evals = counter.per_image(total)
    metrics: dict = {"unet_evals": evals, **_full_partial(pipe, evals)}

    def one_image() -> None:
        generate(pipe, variant, prompts[:1], seeds[:1])

    if measure_memory:
        metrics["peak_mem_mb"] = cost.peak_memory_mb(one_image, str(next(denoiser(pipe).parameters()).device))
    if measure_macs:
        metrics["macs_per_image"] = cost.count_macs(one_image)
    info = pipeline_info(pipe)
    metrics["model_size_mb"] = info.model_size_mb or cost.model_size_mb(denoiser(pipe))
    if info.kernels:
        metrics["kernels"] = info.kernels
    return VariantResult(variant, np.concatenate(chunks), list(prompts), list(seeds), metrics)


def _full_partial(pipe: DiffusionPipeline, evals: float) -> dict:
    """unet_evals split into full and partial (DeepCache's shallow branch) evaluations of the last call."""
    from backend.methods.deepcache.cost import eval_counts

    counts = eval_counts(pipe)
    if not counts["evals"]:
        return {"unet_evals_full": evals, "unet_evals_partial": 0.0}
    full = evals * counts["full"] / counts["evals"]
    return {"unet_evals_full": full, "unet_evals_partial": evals - full}


def time_variants(pipes: dict[str, tuple[Variant, DiffusionPipeline]], prompt: str, seed: int,
                  repeats: int = 3, baseline: str | None = None) -> dict[str, dict]:
    """The timing protocol (backend.metrics.cost.timed_rounds) on one end-to-end image per pipeline: warm-up,
    interleaved rounds, median latency with its interval and, against ``baseline``, the speedup per round."""
    fns = {name: (lambda v=v, p=p: generate(p, v, [prompt], [seed])) for name, (v, p) in pipes.items()}
    device = str(next(denoiser(next(iter(pipes.values()))[1]).parameters()).device)
    return cost.timed_rounds(fns, repeats=repeats, warmup=1, device=device, baseline=baseline)


TIMING_KEYS = ("latency_s", "latency_ci", "latency_p90_s", "speedup", "speedup_ci", "timing_noisy")


def add_quality(result: VariantResult, baseline: VariantResult | None = None, judge_absent: str | None = None,
                scorer_names: list[str] | None = None) -> None:
    """Quality metrics of a result, paired against the same-seed baseline when given. ``judge_absent``: why the
    Shapes judge cannot score this model (then the scorers do, and the reason is reported)."""
    base_images = None if baseline is None else baseline.images
    if judge_absent is not None:
        from backend.metrics import scorers

        result.metrics.update(scorers.score(result.images, result.prompts, base_images, scorer_names))
        result.metrics["judge_absent"] = judge_absent
    elif result.variant.model not in RANDOM_ARCHS:  # random weights: speed only, no quality
        result.metrics.update(quality.quality_metrics(result.images, result.prompts, base_images))


def evaluate_variant(
    variant: Variant, baseline: Variant | None = None, n: int = 200, prompt_set_name: str = DEFAULT_SET,
    seed: int = 0, repeats: int = 3, batch_size: int = 25, on_progress: ProgressFn | None = None,
    prompts: list[str] | None = None, scorer_names: list[str] | None = None,
) -> dict:
    """All metrics of one variant on n prompts (the first n of ``prompts``; default: a Shapes prompt set for a
    Shapes model, the built-in general captions otherwise), seeds seed..seed+n-1; with a baseline, quality paired
    per prompt and seed and the end-to-end speedup timed in interleaved rounds."""
    from backend.metrics.scorers import judge_absent_reason, require
    from backend.sampling import load_model

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"--n {n!r} is out of range; allowed: a whole number ≥ 1")
    if not 0 <= seed <= MAX_SEED - n + 1:  # prompt i uses seed + i: the last seed must be in range too
        raise ValueError(f"--seed {seed} with --n {n}: prompt i uses seed + i, up to {seed + n - 1}; allowed: seeds "
                         f"0 to {MAX_SEED}, so --seed 0 to {MAX_SEED - n + 1}")
    if variant.model in RANDOM_ARCHS:
        raise quality.QualityUnavailable(f"model {variant.model!r} has random weights: it is for speed measurements "
                                         "only, quality metrics are refused")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"--repeats {repeats!r} is out of range; allowed: a whole number ≥ 1")
    judge_absent = judge_absent_reason(load_model(variant))
    if scorer_names is not None:
        require(scorer_names)  # a scorer that cannot run fails here, before any image
    if prompts is not None:
        prompts, prompt_set_name = list(prompts)[:n], "file"
    elif judge_absent is None:
        prompts = eval_prompts(prompt_set_name, n)
    else:
        from backend.captions import general_captions

        prompts, prompt_set_name = list(general_captions())[:n], "general"
    n = len(prompts)
    seeds = [seed + i for i in range(n)]
    pipe = build_pipeline(variant)
    base = base_pipe = None
    if baseline is not None:
        base_pipe = build_pipeline(baseline)
        base = run_variant(baseline, prompts, seeds, batch_size, measure_macs=False, pipe=base_pipe)
    result = run_variant(variant, prompts, seeds, batch_size, on_progress=on_progress, pipe=pipe)
    pipes = {"variant": (variant, pipe)} | ({"baseline": (baseline, base_pipe)} if baseline is not None else {})
    timing = time_variants(pipes, prompts[0], seeds[0], repeats, baseline="baseline" if baseline else None)
    result.metrics.update({k: v for k, v in timing["variant"].items() if k in TIMING_KEYS})
    result.metrics["timing"] = f"{repeats} interleaved rounds of one image after one warm-up" + (
        ", speedup = baseline / variant per round (median, 95% interval)" if baseline else "")
    add_quality(result, base, judge_absent, scorer_names)
    return {"variant": variant.to_dict(), "prompt_set": prompt_set_name, "n": n, "seed": seed, **result.metrics,
            "environment": environment()}


def _cpu_isa() -> str:
    """The CPU's instruction set as oneDNN's int8 kernels see it (e.g. "avx512_vnni", "avx2"), with a cap."""
    from backend.methods.quant.isa import cpu_isa

    isa = cpu_isa()
    return f"{isa.name} (ONEDNN_MAX_CPU_ISA={isa.cap})" if isa.cap else isa.name


def environment() -> dict:
    """Where a measurement was made: CPU/GPU, library versions, git commit."""
    import diffusers

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip()
    return {
        "cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads(),
        "cpu_isa": _cpu_isa(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
        "git_commit": commit or None,
    }
