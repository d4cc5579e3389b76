"""DeepCache: baseline vs uniform N ∈ {2, 3, 5} × branch ∈ {0, 1} and nonuniform N = 5, side by side.

On a transformer (DiT) model the same configurations are block caching (FORA / Δ-DiT): branch b recomputes the first
and last b + 1 transformer blocks; its MACs are counted on each real transformer evaluation. DiT models: the
random-weight builds (speed only) and the embedded shapes-dit (speed and quality, like shapes-sd).

Two models: sd15-arch (SD 1.5 architecture, random weights) at 256×256 and 20 DDIM steps, speed only; and
the embedded shapes-sd at 50 DDIM steps with quality against the same-seed baseline (prompt_accuracy with the
paired `accuracy_delta_points` and its 95% interval `accuracy_delta_ci`, kid_shapes beside its floor,
psnr_vs_baseline, ssim_vs_baseline). Every row: latency per image end to end timed by the protocol
(backend.metrics.cost.timed_rounds: median of --repeats interleaved rounds after a warm-up, with its interval),
`speedup` (median of per-round ratios, `speedup_ci`, `timing_noisy`), the denoising loop's wall-clock speedup
(`loop_speedup`: first U-Net evaluation to the last scheduler step) against the U-Net MACs-predicted one
(`macs_speedup`, MACs counted on the model with torch's FlopCounterMode), their ratio `loop_vs_macs`,
full/partial evaluations, peak memory and the bytes the cache holds (`cache_mb`; for sd15-arch also at 512×512
with CFG, `cache_mb_512_cfg`).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from backend.bench.common import check_positive, comma_choices
from backend.world.prompts import DEFAULT_SET, PROMPT_SETS

MODELS = ("sd15-arch", "shapes")
DIT_MODELS = ("shapes-dit", "tiny-pixart", "tiny-sd3", "tiny-flux", "pixart-arch", "sd3-arch")  # also accepted
CONFIGS = {  # name -> deepcache section (None: the baseline); nonuniform's center is scaled to the step count
    "baseline": None,
    "uniform-n2-b0": {"interval": 2, "branch": 0},
    "uniform-n3-b0": {"interval": 3, "branch": 0},
    "uniform-n5-b0": {"interval": 5, "branch": 0},
    "uniform-n2-b1": {"interval": 2, "branch": 1},
    "uniform-n3-b1": {"interval": 3, "branch": 1},
    "uniform-n5-b1": {"interval": 5, "branch": 1},
    "nonuniform-n5-b1": {"interval": 5, "branch": 1, "schedule": "nonuniform", "power": 1.4},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default=",".join(MODELS), help=f"subset of {', '.join(MODELS)} (default both), "
                        f"the transformers {', '.join(DIT_MODELS)} (block caching; shapes-dit judged like shapes), "
                        "or local model folders / single files (speed, and psnr/ssim vs the baseline on the "
                        "built-in general captions)")
    parser.add_argument("--local-steps", type=int, default=20, help="DDIM steps of a local model (default 20)")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"subset of {', '.join(CONFIGS)} (the baseline is always run)")
    parser.add_argument("--n", type=int, default=200, help="shapes / shapes-dit prompts for quality (default 200)")
    parser.add_argument("--set", default=DEFAULT_SET, choices=PROMPT_SETS, help=f"prompt set (default {DEFAULT_SET})")
    parser.add_argument("--seed", type=int, default=0, help="first seed; prompt i uses seed+i")
    parser.add_argument("--repeats", type=int, default=3, help="timed one-image runs per row, after 1 warm-up")
    parser.add_argument("--sd15-steps", type=int, default=20, help="sd15-arch DDIM steps (default 20)")
    parser.add_argument("--sd15-size", type=int, default=256, help="sd15-arch height and width (default 256)")
    parser.add_argument("--shapes-steps", type=int, default=50, help="shapes-sd DDIM steps (default 50)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])


def _section(name: str, steps: int, dit: bool = False) -> dict | None:
    section = CONFIGS[name]
    if section is not None and section.get("schedule") == "nonuniform":
        section = {**section, "center": round(15 * steps / 50)}  # the paper's c=15 at 50 steps
    if section is not None and dit:  # branch b: the first and last b + 1 transformer blocks run every step
        section = {k: v for k, v in section.items() if k != "branch"}
        section.update(first_blocks=CONFIGS[name]["branch"] + 1, last_blocks=CONFIGS[name]["branch"] + 1)
    return section


def _is_dit(model: str) -> bool:
    if model in DIT_MODELS:
        return True
    from backend.models import is_dit, load_pipeline

    return is_dit(load_pipeline(model))


class _LoopTimer:
    """Wall-clock of the denoising loop: the first U-Net evaluation of a call to its last scheduler step.
    CUDA events on a GPU (no extra synchronisation), perf_counter on a CPU."""

    def __init__(self, unet: torch.nn.Module, device: str):
        self.cuda = device.startswith("cuda")
        self.start = self.end = None
        self.rows = self.evals = 0
        self.handle = unet.register_forward_pre_hook(self._pre, with_kwargs=True)

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _pre(self, module, args, kwargs):
        self.evals += 1
        if self.start is None:
            self.start = self._mark()
            sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
            self.rows = sample.shape[0]

    def on_step(self, i: int, n: int) -> None:
        self.end = self._mark()

    def reset(self) -> None:
        self.start = self.end = None
        self.evals = 0

    def seconds(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return self.start.elapsed_time(self.end) / 1000
        return self.end - self.start


def _speed_rows(model: str, steps: int, size: int | None, names: list[str], args) -> list[dict]:
    """Latency, loop time, MACs, memory of every configuration on one private U-Net, interleaved."""
    from backend.methods import deepcache
    from backend.methods.deepcache.cost import unet_macs
    from backend.metrics.cost import EvalMacs, peak_memory_mb, timed_rounds
    from backend.models import denoiser, set_denoiser
    from backend.runs.build import build_pipeline
    from backend.sampling import generate, resolved_size
    from backend.variant import Variant
    from backend.world.prompts import eval_prompts

    dit = _is_dit(model)
    base = {"model": model, "steps": steps, "device": args.device, "dtype": args.dtype}
    if not dit:  # transformers keep their own scheduler (flow matching for SD3 / Flux)
        base["scheduler"] = "ddim"
    if size:
        base.update(height=size, width=size)
    variant = Variant.from_dict(base)
    pipe = build_pipeline(variant)
    set_denoiser(pipe, copy.deepcopy(denoiser(pipe)))  # DeepCache is applied and removed in turn on this copy
    prompt = (eval_prompts(args.set, 1)[0] if model in ("shapes", "shapes-dit")
              else "a photograph of an astronaut riding a horse")
    timer = _LoopTimer(denoiser(pipe), args.device)
    latent = resolved_size(pipe, variant)[0] // pipe.vae_scale_factor  # what generate() draws
    seq_len = getattr(getattr(pipe, "tokenizer", None), "model_max_length", 77)
    macs_by_branch: dict[int, dict] = {}
    stats: dict[str, dict] = {n: {"loop": []} for n in names}

    def one(name: str) -> None:
        """Configure the denoiser for ``name`` (hooks only: microseconds beside an image) and draw one image."""
        section = _section(name, steps, dit)
        if section is None:
            deepcache.remove(pipe)
        else:
            deepcache.apply(pipe, deepcache.DeepCacheConfig.from_dict(section))
        timer.reset()
        generate(pipe, variant, [prompt], [args.seed], on_step=timer.on_step)
        st = stats[name]
        st["loop"].append(timer.seconds())
        st["counts"] = deepcache.get_hook(pipe).stats() if section is not None else None
        st["evals"], st["rows"] = timer.evals, timer.rows

    for name in names:  # MACs first: counted on fake tensors, no compute (a transformer: on its real evaluations)
        branch = (_section(name, steps) or {}).get("branch", 0)
        if branch not in macs_by_branch and not dit:
            macs_by_branch[branch] = unet_macs(pipe.unet, branch, batch=1, latent_height=latent,
                                               latent_width=latent, seq_len=seq_len)
            if model == "sd15-arch":  # the memory goal: SD 1.5 at 512x512 with CFG (batch 2)
                macs_by_branch[branch]["cache_512"] = unet_macs(
                    pipe.unet, branch, batch=2, latent_height=64, latent_width=64)["cache_bytes"]
    try:
        for name in names:  # warm-up, peak memory, evaluation counts
            stats[name]["peak_mem_mb"] = peak_memory_mb(lambda name=name: one(name), args.device)
            if dit:  # MACs of a transformer: counted on its real evaluations
                with EvalMacs(denoiser(pipe)) as counted:
                    one(name)
                stats[name]["macs"] = sum(counted.per_eval)
            stats[name]["loop"].clear()
        # the timing protocol: interleaved rounds, per-round speedup vs the baseline (the first configuration)
        timing = timed_rounds({n: (lambda n=n: one(n)) for n in names}, repeats=max(1, args.repeats), warmup=0,
                              device=args.device, baseline=names[0])
        rows = []
        for name in names:
            section = _section(name, steps, dit)
            branch = (_section(name, steps) or {}).get("branch", 0)
            m, st = macs_by_branch.get(branch), stats[name]
            counts = st["counts"] or {"full": st["evals"], "partial": 0, "cache_bytes": 0}
            row = {"model": model, "config": name, "steps": steps, "size": latent * pipe.vae_scale_factor,
                   "interval": (section or {}).get("interval", 1),
                   "branch": (_section(name, steps) or {}).get("branch") if section else None,
                   "first_blocks": (section or {}).get("first_blocks"),
                   "last_blocks": (section or {}).get("last_blocks"),
                   "schedule": (section or {}).get("schedule", "uniform") if section else None,
                   "full_evals": counts["full"], "partial_evals": counts["partial"],
                   **{k: timing[name][k] for k in ("latency_s", "latency_ci", "latency_p90_s", "speedup",
                                                    "speedup_ci", "timing_noisy")},
                   "loop_s": statistics.median(st["loop"]),
                   "unet_gmacs_per_image": st["macs"] / 1e9 if dit else
                   (counts["full"] * m["full"] + counts["partial"] * m["partial"]) * st["rows"] / 1e9,
                   "peak_mem_mb": st["peak_mem_mb"], "cache_mb": counts["cache_bytes"] / 1e6}
            if model == "sd15-arch" and section is not None:
                row["cache_mb_512_cfg"] = m["cache_512"] / 1e6
            rows.append(row)
    finally:
        deepcache.remove(pipe)
        timer.handle.remove()
    base = rows[0]
    for row in rows:
        row["loop_speedup"] = base["loop_s"] / row["loop_s"]
        row["macs_speedup"] = base["unet_gmacs_per_image"] / row["unet_gmacs_per_image"]
        row["loop_vs_macs"] = row["loop_speedup"] / row["macs_speedup"]
    return rows


def _quality(model: str, steps: int, names: list[str], args) -> dict[str, dict]:
    """Quality metrics of every configuration (images of --n prompts) against the same-seed baseline."""
    from backend.captions import general_captions
    from backend.runs.runner import add_quality, run_variant
    from backend.variant import Variant
    from backend.world.prompts import eval_prompts

    judge_absent, dit = None, _is_dit(model)
    if model in ("shapes", "shapes-dit"):
        prompts = eval_prompts(args.set, args.n)
    else:  # a local model: no Shapes judge
        from backend.metrics.scorers import judge_absent_reason
        from backend.models import load_pipeline

        prompts, judge_absent = list(general_captions())[: args.n], judge_absent_reason(load_pipeline(model))
    seeds = [args.seed + i for i in range(args.n)]
    out, base = {}, None
    for name in names:
        section = _section(name, steps, dit)
        data = {"model": model, "name": name, "steps": steps, "device": args.device, "dtype": args.dtype}
        if not dit:
            data["scheduler"] = "ddim"
        if section is not None:
            data["deepcache"] = section
        print(f"deepcache bench: {model} quality {name} ({args.n} prompts)", file=sys.stderr)
        result = run_variant(Variant.from_dict(data), prompts, seeds, measure_macs=False, measure_memory=False)
        add_quality(result, base, judge_absent)
        if base is None:
            base = result
        out[name] = result.metrics
    return out


def run(args) -> list[dict]:
    models = [m.strip() for m in str(args.models).split(",") if m.strip()]
    local = [m for m in models if m not in MODELS and (Path(m).exists() or m in DIT_MODELS)]
    unknown = [m for m in models if m not in MODELS and m not in local]
    if unknown or not models:
        raise ValueError(f"--models: {unknown[0] if unknown else args.models!r} is not allowed; allowed: "
                         f"{', '.join(MODELS + DIT_MODELS)}, or a local model folder")
    names = comma_choices(args.configs, CONFIGS, "--configs")
    names = ["baseline"] + [c for c in names if c != "baseline"]
    check_positive(args, ("n", "repeats", "sd15_steps", "sd15_size", "shapes_steps", "local_steps"))
    if "shapes" in models:
        from backend.models import SHAPES_DIR

        if not (SHAPES_DIR / "model_index.json").exists():
            raise FileNotFoundError(f"shapes-sd is not in {SHAPES_DIR} yet; run with --models sd15-arch or train it")
    torch.manual_seed(0)
    rows = []
    if "sd15-arch" in models:
        print(f"deepcache bench: sd15-arch speed, {len(names)} configurations", file=sys.stderr)
        rows += _speed_rows("sd15-arch", args.sd15_steps, args.sd15_size, names, args)
    if "shapes" in models:
        print(f"deepcache bench: shapes-sd speed, {len(names)} configurations", file=sys.stderr)
        speed = _speed_rows("shapes", args.shapes_steps, None, names, args)
        quality = _quality("shapes", args.shapes_steps, names, args)
        for row in speed:
            q = quality[row["config"]]
            row.update({k: q.get(k) for k in ("prompt_accuracy", "kid_shapes", "kid_shapes_floor",
                                               "psnr_vs_baseline", "ssim_vs_baseline")})
            _add_paired_delta(row, q)
        rows += speed
    for model in local:
        from backend.models import RANDOM_ARCHS, check_source, load_pipeline, model_defaults

        check_source(model)
        steps = model_defaults(load_pipeline(model)).get("steps", args.local_steps) if model in DIT_MODELS \
            else args.local_steps
        print(f"deepcache bench: {model} speed and quality, {len(names)} configurations", file=sys.stderr)
        speed = _speed_rows(model, steps, None, names, args)
        if model in RANDOM_ARCHS:  # random weights: speed only
            rows += speed
            continue
        quality = _quality(model, steps, names, args)
        for row in speed:
            q = quality[row["config"]]
            row.update({k: q.get(k) for k in ("prompt_accuracy", "psnr_vs_baseline", "ssim_vs_baseline")})
            _add_paired_delta(row, q)
        rows += speed
    return rows


def _add_paired_delta(row: dict, quality: dict) -> None:
    """The accuracy change against the baseline, paired per prompt and seed (bootstrap 95% interval), in points,
    with its verdict (models the Shapes judge scores)."""
    delta = quality.get("prompt_accuracy_delta")
    if delta is not None:
        row["accuracy_delta_points"] = 100 * delta["delta"]
        row["accuracy_delta_ci"] = [100 * x for x in delta["ci"]] if delta["ci"] else None
        row["accuracy_verdict"] = delta.get("verdict")
