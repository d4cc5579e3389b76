"""One prompt and seed through a baseline and up to four variants, each on a cached pipeline.

:func:`compare` returns one row per column (image, latency, speed-up, PSNR/SSIM vs the baseline, U-Net
evaluations). A column whose variant is invalid or fails carries its own ``error`` and the others still run.
Cancel and a time limit are checked before every U-Net block (:func:`stop_inside`), so even one huge
denoising step stops within a block; :class:`Limits` refuses steps and sizes above a caller's caps.
"""

from __future__ import annotations

import collections
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from backend.core import jsonable
from backend.metadata import pipeline_info
from backend.methods.params import MAX_SEED
from backend.variant import Variant, VariantError

MAX_VARIANTS = 4
# One device, one generation at a time (the UI's queue serialises too; this covers every other caller).
DEVICE_LOCK = threading.RLock()


class GenerationCancelled(BaseException):
    """Raised out of a generation when its cancel flag is set or its time limit has passed.

    A BaseException, so that per-item error handlers (a sweep recording a failed variant, a column's error)
    let it through: a cancel ends the whole request."""


@dataclass(frozen=True)
class Limits:
    """Caps a server puts on one request: denoising steps, pixels per image (height × width), wall time."""

    max_steps: int | None = None
    max_pixels: int | None = None
    time_limit_s: float | None = None

    def check(self, variant: Variant) -> None:
        if self.max_steps is not None and variant.steps > self.max_steps:
            raise VariantError(f"steps: {variant.steps} is above this server's limit of {self.max_steps} "
                               "(python -m app --max-steps)")
        h, w = variant.height or 0, variant.width or 0
        if self.max_pixels is not None and (h or w) * (w or h) > self.max_pixels:
            raise VariantError(f"height × width: {h or w}×{w or h} is above this server's limit of "
                               f"{self.max_pixels} pixels (python -m app --max-pixels)")


@contextmanager
def stop_inside(cancel: threading.Event | None, deadline: float | None = None,
                error: type[BaseException] = GenerationCancelled) -> Iterator[None]:
    """While active, every module call raises ``error`` (GenerationCancelled) once ``cancel`` (anything with
    ``is_set()``) is set or ``deadline`` (time.monotonic()) has passed: a request stops within one layer, not one
    denoising step."""
    if cancel is None and deadline is None:
        yield
        return
    owner = threading.get_ident()

    def hook(module, args):
        if threading.get_ident() != owner:
            return None
        if cancel is not None and cancel.is_set():
            raise error("cancelled")
        if deadline is not None and time.monotonic() > deadline:
            raise error("stopped at this server's time limit per request (python -m app --time-limit)")
        return None

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------- pipelines

_PIPES: collections.OrderedDict = collections.OrderedDict()
_PIPES_MAX = 8


def _cache_key(variant: Variant) -> str:
    d = variant.to_dict()
    for key in ("name", "steps", "guidance", "height", "width"):  # call-time settings: same pipeline
        d.pop(key, None)
    return json.dumps(d, sort_keys=True)


def cached_pipeline(variant: Variant):
    """build_pipeline(variant), kept for reuse (PTQ calibration and checkpoint loading happen once).

    A new pipeline makes one 1-step call first, so that a column's latency excludes lazy first-call costs.
    """
    from backend.runs.build import build_pipeline
    from backend.sampling import generate

    key = _cache_key(variant)
    if key in _PIPES:
        _PIPES.move_to_end(key)
        return _PIPES[key]
    pipe = build_pipeline(variant)
    generate(pipe, Variant.from_dict({**variant.to_dict(), "steps": 1, "name": "warm-up"}), ["warm-up"], [0])
    _PIPES[key] = pipe
    while len(_PIPES) > _PIPES_MAX:
        _PIPES.popitem(last=False)
    return pipe


def clear_pipeline_cache() -> None:
    _PIPES.clear()


def check_count(variants: list) -> None:
    if not isinstance(variants, list) or not variants:
        raise VariantError("give a baseline and up to 4 variants (a non-empty list of variant objects)")
    if len(variants) > MAX_VARIANTS + 1:
        raise VariantError(f"{len(variants) - 1} variants given; allowed: up to {MAX_VARIANTS} besides the baseline")


def parse_variant(raw: dict, i: int, model: str | None = None, limits: Limits | None = None) -> Variant:
    """Column i's variant (a model given here overrides its own); VariantError names the bad value."""
    if not isinstance(raw, dict):
        raise VariantError(f"variant {i}: expected an object, got {type(raw).__name__}")
    data = dict(raw)
    if model:
        data["model"] = model
    data.setdefault("name", "baseline" if i == 0 else f"variant {i}")
    variant = Variant.from_dict(data)
    if limits is not None:
        limits.check(variant)
    return variant


def parse_variants(variants: list[dict], model: str | None = None, limits: Limits | None = None) -> list[Variant]:
    """The baseline (first) and the variants, all validated (the first error is raised)."""
    check_count(variants)
    return [parse_variant(raw, i, model, limits) for i, raw in enumerate(variants)]


# --------------------------------------------------------------------------------------- comparison

def _png_ready(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text and isinstance(exc, ValueError) else f"{type(exc).__name__}: {text[0] if text else ''}"


def _deepcache_hook(pipe):
    from backend.methods.deepcache import get_hook

    return get_hook(pipe)


def _generate_column(v: Variant, prompt: str, seed: int, step: Callable[[int, int], None]) -> dict:
    from backend.metrics.cost import UnetCallCounter
    from backend.models import denoiser
    from backend.sampling import generate

    pipe = cached_pipeline(v)
    with UnetCallCounter(denoiser(pipe)) as counter:
        start = time.perf_counter()
        image = generate(pipe, v, [prompt], [seed], on_step=step)[0]
        latency = time.perf_counter() - start
    row = {"image": _png_ready(image), "latency_s": latency, "unet_evals": counter.per_image(1)}
    hook = _deepcache_hook(pipe)
    if hook is not None:  # DeepCache: how many U-Net calls (denoising steps) ran in full / cached
        row["full_steps"], row["cached_steps"] = hook.full_evals, hook.partial_evals
    if pipeline_info(pipe).kernels:  # quantized: which kernels actually ran
        row["kernels"] = pipeline_info(pipe).kernels
    row.update(_judge(pipe, image, prompt))
    return row


def _judge(pipe, image: np.ndarray, prompt: str) -> dict:
    """The Shapes judge's verdict on one image of an embedded model (shapes-sd, shapes-dit: prompt_accuracy 0/1 and
    per attribute), or {} where there is no judge (random weights, another model, a prompt outside the Shapes world)."""
    from backend.metrics.quality import QualityUnavailable, judge_metrics
    from backend.models import has_shapes_judge, is_random_weights

    if not has_shapes_judge(pipe) or is_random_weights(pipe):
        return {}
    try:
        return judge_metrics(image[None], [prompt])
    except QualityUnavailable:
        return {}


def check_seed(seed) -> int:
    """A seed as a whole number from 0 to MAX_SEED (2**53 − 1, exact in JSON and in a browser); VariantError
    naming the value otherwise (never rounded: 1.5 or 2**53 + 1 are refused, not run as 2 or 2**53)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, float)) or isinstance(seed, float) and (
            not math.isfinite(seed) or not seed.is_integer()):
        raise VariantError(f"seed {seed!r} is not a whole number; allowed: 0 to {MAX_SEED}")
    if not 0 <= seed <= MAX_SEED:
        raise VariantError(f"seed {int(seed)} is out of range; allowed: 0 to {MAX_SEED}")
    return int(seed)


def column_labels(variants: list[Variant | dict | None]) -> list[str]:
    """Each column's label, derived from its settings: its methods' labels (each method config's ``label()``) or
    "baseline", its steps (and scheduler, and guidance where it differs from the first column's); a name the user
    gave is kept as a prefix ("my student: LCM rg-lcm-lora · 4 steps"). Two equal labels get " (2)", " (3)"."""
    labels: list[str] = []
    first = next((v for v in variants if isinstance(v, Variant)), None)
    for i, v in enumerate(variants):
        if not isinstance(v, Variant):
            name = v.get("name") if isinstance(v, dict) else None
            labels.append(str(name or ("baseline" if i == 0 else f"variant {i}")))
            continue
        derived = " + ".join(v.method(s).label() for s in v.on()) or "baseline"
        sampling = f"{v.scheduler}, {v.steps} steps" if v.scheduler else f"{v.steps} steps"
        if first is not None and v.guidance is not None and v.guidance != first.guidance:
            sampling += f", CFG {v.guidance:g}"
        derived += f" · {sampling}"
        given = (v.name or "").strip()
        labels.append(f"{given}: {derived}" if given and given not in (derived, _default_name(i)) else derived)
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label} ({seen[label]})"
    return labels


def _default_name(i: int) -> str:
    return "baseline" if i == 0 else f"variant {i}"


def compare_columns(
    prompt: str, seed: int, variants: list[dict], model: str | None = None,
    on_step: Callable[[int, int, str], None] | None = None, cancel: threading.Event | None = None,
    limits: Limits | None = None,
) -> Iterator[dict]:
    """Generate ``prompt`` with ``seed`` through variants[0] (the baseline) and the others, yielding each
    column's row as soon as it is made (the baseline first).

    One row per column, in order: name (its label, :func:`column_labels`), variant, and either ``error`` (one
    line) or image (H×W×3 uint8), latency_s, unet_evals, speedup, psnr_vs_baseline / ssim_vs_baseline (None for
    the baseline). ``on_step(done, total, name)`` counts denoising steps over all columns. A set ``cancel`` (or
    the limits' time limit) raises GenerationCancelled; an empty prompt, a bad seed or model raise VariantError
    before any work.
    """
    from backend.metrics.quality import psnr_ssim
    from backend.models import ModelError

    if not isinstance(prompt, str) or not prompt.strip():
        raise VariantError("the prompt is empty; give a non-empty text prompt")
    seed = check_seed(seed)
    check_count(variants)
    parsed: list[Variant | VariantError] = []
    for i, raw in enumerate(variants):
        try:
            parsed.append(parse_variant(raw, i, model, limits))
        except VariantError as exc:
            parsed.append(exc)
    labels = column_labels([v if isinstance(v, Variant) else variants[i] for i, v in enumerate(parsed)])
    total = sum(v.steps for v in parsed if isinstance(v, Variant))
    done = [0]
    base: dict | None = None
    deadline = None if limits is None or limits.time_limit_s is None else time.monotonic() + limits.time_limit_s
    with DEVICE_LOCK, stop_inside(cancel, deadline):
        for i, v in enumerate(parsed):
            if isinstance(v, VariantError):
                row = {"name": labels[i], "variant": variants[i], "error": str(v)}
            else:
                def step(k: int, n: int, name: str = labels[i]) -> None:
                    done[0] += 1
                    if on_step is not None:
                        on_step(done[0], total, name)

                row = {"name": labels[i], "variant": v.to_dict(), "steps": v.steps}
                try:
                    row.update(_generate_column(v, prompt, seed, step))
                except ModelError:
                    raise
                except Exception as exc:  # this column's problem: shown in its column, the others go on
                    row["error"] = _one_line(exc)
            base = row if base is None else base
            _add_relative(row, base, psnr_ssim)
            yield row


def compare(prompt: str, seed: int, variants: list[dict], model: str | None = None, **kwargs) -> list[dict]:
    """Every column's row of :func:`compare_columns` (same arguments), once all are made."""
    return list(compare_columns(prompt, seed, variants, model, **kwargs))


def _add_relative(row: dict, base: dict, psnr_ssim) -> None:
    """The row's speed-up and PSNR / SSIM against the baseline's row (None where either failed)."""
    if "error" in row:
        return
    ok = "error" not in base
    row["speedup"] = base["latency_s"] / row["latency_s"] if ok and row["latency_s"] > 0 else None
    row["psnr_vs_baseline"] = row["ssim_vs_baseline"] = None
    if ok and row is not base and row["image"].shape == base["image"].shape:
        psnr, ssim = psnr_ssim(row["image"][None] / 255.0, base["image"][None] / 255.0)
        row["psnr_vs_baseline"], row["ssim_vs_baseline"] = psnr, ssim


TIMING = ("interleaved rounds of one image per column, right after the columns' first generation (which is "
          "the warm-up); speedup = baseline / column per round (median, 95% interval)")


def time_columns(prompt: str, seed: int, variants: list[dict], model: str | None = None, rounds: int = 3,
                 cancel: threading.Event | None = None, limits: Limits | None = None) -> list[dict | None]:
    """The timing protocol (backend.metrics.cost.timed_rounds) over the columns' cached pipelines: ``rounds``
    interleaved rounds of one image each, speed-up against the first column. One dict per column (latency_s,
    latency_ci, speedup, speedup_ci, timing_noisy, repeats), None for a column that cannot run."""
    from backend.metrics.cost import timed_rounds
    from backend.sampling import generate

    check_count(variants)
    fns = {}
    for i, raw in enumerate(variants):
        try:
            v = parse_variant(raw, i, model, limits)
        except VariantError:
            continue
        key = _cache_key(v)
        if key in _PIPES:  # only columns that generated already (and so are warm)
            fns[str(i)] = lambda p=_PIPES[key], v=v: generate(p, v, [prompt], [int(seed)])
    if not fns:
        return [None] * len(variants)
    deadline = None if limits is None or limits.time_limit_s is None else time.monotonic() + limits.time_limit_s
    with DEVICE_LOCK, stop_inside(cancel, deadline):
        timing = timed_rounds(fns, repeats=rounds, warmup=0, baseline="0" if "0" in fns else None)
    return [timing.get(str(i)) for i in range(len(variants))]


def metrics_line(row: dict) -> str:
    """One line under an image: latency, speed-up, PSNR, U-Net evaluations (or the column's error)."""
    from backend.metrics.cost import describe_timing

    if row.get("error"):
        return f"Error: {row['error']}"
    if row.get("timing"):
        parts = [describe_timing(row["timing"]) + f" ({row['timing']['repeats']} rounds)"]
    else:
        parts = [f"{row['latency_s']:.2f} s"]
        if row.get("speedup") is not None:
            parts.append(f"{row['speedup']:.2f}× (one run)")
    psnr = row.get("psnr_vs_baseline")
    if psnr is not None:
        parts.append("PSNR ∞ (identical)" if math.isinf(psnr) else f"PSNR {psnr:.1f} dB")
    evals = f"{row['unet_evals']:g} U-Net evals"
    if row.get("full_steps") is not None:
        evals += f" ({row['full_steps']} full / {row['cached_steps']} cached steps)"
    parts.append(evals)
    if row.get("kernels"):
        parts.append(row["kernels"])
    if row.get("attr_accuracy"):
        marks = " ".join(f"{k} {'✓' if v >= 1 else '✗'}" for k, v in row["attr_accuracy"].items() if k != "count")
        parts.append(f"judge {'✓' if row.get('prompt_accuracy') == 1 else '✗'} ({marks})")
    return " · ".join(parts)


def jsonable_rows(rows: list[dict]) -> list[dict]:
    """Rows without images, JSON-safe (backend.core.jsonable: "inf" for identical images): what an API stores."""
    return [jsonable({k: v for k, v in row.items() if k not in ("image", "images", "image_path", "baseline_image")})
            for row in rows]
