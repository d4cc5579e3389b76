"""What the web workbench needs, composed from the existing backend APIs (no UI imports here).

- :func:`compare`: one prompt and seed through a baseline and up to four variants (cached pipelines),
  with latency, speedup, PSNR vs the baseline and U-Net evaluations per column; per-step progress and
  cooperative cancel.
- :func:`sweep`: a method parameter over a range of values against the baseline (latency vs quality).
- :class:`JobManager`: fine-tunes (EfficientDM, LCD, RG-LCD) as jobs in their own worker process, with
  state and progress on disk so a page reload or a UI restart finds them; finished checkpoints.
- :func:`method_params`, :func:`job_params`, :data:`PRESETS`: the declared knobs that forms are built from.
"""

from __future__ import annotations

import collections
import json
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from backend.runs.variant import METHOD_SECTIONS, SCHEDULERS, Variant, VariantError, method_config_class

MODELS = ("shapes", "tiny-arch", "sd15-arch")
MAX_VARIANTS = 4
# One device, one generation at a time (the UI's queue serialises too; this covers every other caller).
DEVICE_LOCK = threading.RLock()


class GenerationCancelled(Exception):
    """Raised out of a generation when its cancel flag is set (between denoising steps)."""


# ---------------------------------------------------------------------------------------------- knobs

def method_params(section: str) -> list[dict]:
    """The UI-visible declared parameters of a Variant method section (describe() with ui=True)."""
    return [p for p in method_config_class(section).describe() if p.get("ui", True)]


def all_method_params() -> dict[str, list[dict]]:
    out = {}
    for section in METHOD_SECTIONS:
        try:
            out[section] = method_params(section)
        except VariantError:  # a method missing from this build: no controls for it
            continue
    return out


def model_defaults_for(model: str) -> dict:
    """steps / guidance / height / width the model ships; ModelError when it cannot be loaded."""
    from backend.models import load_pipeline, model_defaults

    return dict(model_defaults(load_pipeline(model)))


# ------------------------------------------------------------------------------------------ generation

_PIPES: collections.OrderedDict = collections.OrderedDict()
_PIPES_MAX = 8


def _cache_key(variant: Variant) -> str:
    d = variant.to_dict()
    for key in ("name", "steps", "guidance", "height", "width"):  # call-time settings: same pipeline
        d.pop(key, None)
    return json.dumps(d, sort_keys=True)


def cached_pipeline(variant: Variant):
    """build_pipeline(variant), kept for reuse (PTQ calibration and checkpoint loading happen once)."""
    from backend.runs.build import build_pipeline, generate

    key = _cache_key(variant)
    if key in _PIPES:
        _PIPES.move_to_end(key)
        return _PIPES[key]
    pipe = build_pipeline(variant)
    # one short call first, so that a column's latency does not include first-call (lazy init) costs
    try:
        generate(pipe, Variant.from_dict({**variant.to_dict(), "steps": 1}), ["warm-up"], [0])
    except Exception:  # the real call reports any problem
        pass
    _PIPES[key] = pipe
    while len(_PIPES) > _PIPES_MAX:
        _PIPES.popitem(last=False)
    return pipe


def clear_pipeline_cache() -> None:
    _PIPES.clear()


def parse_variants(variants: list[dict], model: str | None = None) -> list[Variant]:
    """Validate the baseline (first) and the variants; a model given here overrides theirs."""
    if not isinstance(variants, list) or not variants:
        raise VariantError("give a baseline and up to 4 variants (a non-empty list of variant objects)")
    if len(variants) > MAX_VARIANTS + 1:
        raise VariantError(f"{len(variants) - 1} variants given; allowed: up to {MAX_VARIANTS} besides the baseline")
    out = []
    for i, raw in enumerate(variants):
        if not isinstance(raw, dict):
            raise VariantError(f"variant {i}: expected an object, got {type(raw).__name__}")
        data = dict(raw)
        if model:
            data["model"] = model
        data.setdefault("name", "baseline" if i == 0 else f"variant {i}")
        out.append(Variant.from_dict(data))
    return out


def _png_ready(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def compare(
    prompt: str, seed: int, variants: list[dict], model: str | None = None,
    on_step: Callable[[int, int, str], None] | None = None, cancel: threading.Event | None = None,
) -> list[dict]:
    """Generate ``prompt`` with ``seed`` through variants[0] (the baseline) and the others.

    Returns one row per column: name, variant, image (H×W×3 uint8), latency_s (this generation's
    wall-clock seconds), unet_evals, speedup and psnr_vs_baseline / ssim_vs_baseline (None for the
    baseline). ``on_step(done, total, name)`` counts denoising steps over all columns; a set ``cancel``
    raises GenerationCancelled between steps.
    """
    from backend.metrics.cost import UnetCallCounter
    from backend.metrics.quality import psnr_ssim
    from backend.runs.build import generate

    if not isinstance(prompt, str) or not prompt.strip():
        raise VariantError("the prompt is empty; give a non-empty text prompt")
    try:
        seed = int(seed)
    except (TypeError, ValueError) as exc:
        raise VariantError(f"seed {seed!r} must be a whole number") from exc
    parsed = parse_variants(variants, model)
    total = sum(v.steps for v in parsed)
    done = [0]
    rows: list[dict] = []
    with DEVICE_LOCK:
        for v in parsed:
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled(f"cancelled before {v.name}")
            pipe = cached_pipeline(v)

            def step(i: int, n: int, name: str = v.name) -> None:
                done[0] += 1
                if on_step is not None:
                    on_step(done[0], total, name)
                if cancel is not None and cancel.is_set():
                    raise GenerationCancelled(f"cancelled at step {i}/{n} of {name}")

            with UnetCallCounter(pipe.unet) as counter:
                start = time.perf_counter()
                image = generate(pipe, v, [prompt], [seed], on_step=step)[0]
                latency = time.perf_counter() - start
            row = {"name": v.name, "variant": v.to_dict(), "image": _png_ready(image), "latency_s": latency,
                   "unet_evals": counter.per_image(1), "steps": v.steps}
            hook = _deepcache_hook(pipe)
            if hook is not None:  # DeepCache: how many U-Net calls (denoising steps) ran in full / cached
                row["full_steps"], row["cached_steps"] = hook.full_evals, hook.partial_evals
            if getattr(pipe, "speedlab_kernels", None):  # quantized: which kernels actually ran
                row["kernels"] = pipe.speedlab_kernels
            rows.append(row)
    base = rows[0]
    for row in rows:
        row["speedup"] = base["latency_s"] / row["latency_s"] if row["latency_s"] > 0 else None
        if row is base:
            row["psnr_vs_baseline"] = row["ssim_vs_baseline"] = None
        elif row["image"].shape == base["image"].shape:
            psnr, ssim = psnr_ssim(row["image"][None] / 255.0, base["image"][None] / 255.0)
            row["psnr_vs_baseline"], row["ssim_vs_baseline"] = psnr, ssim
        else:
            row["psnr_vs_baseline"] = row["ssim_vs_baseline"] = None
    return rows


def _deepcache_hook(pipe):
    try:
        from backend.methods.deepcache import get_hook
    except ImportError:
        return None
    return get_hook(pipe)


def metrics_line(row: dict) -> str:
    """One line under an image: latency, speedup, PSNR, U-Net evaluations."""
    parts = [f"{row['latency_s']:.2f} s"]
    if row.get("speedup") is not None:
        parts.append(f"{row['speedup']:.2f}×")
    psnr = row.get("psnr_vs_baseline")
    if psnr is not None:
        parts.append("PSNR ∞ (identical)" if math.isinf(psnr) else f"PSNR {psnr:.1f} dB")
    evals = f"{row['unet_evals']:g} U-Net evals"
    if row.get("full_steps") is not None:
        evals += f" ({row['full_steps']} full / {row['cached_steps']} cached steps)"
    parts.append(evals)
    if row.get("kernels"):
        parts.append(row["kernels"])
    return " · ".join(parts)


def jsonable_rows(rows: list[dict]) -> list[dict]:
    """Rows without images, infinities as "inf": what an API or a report stores."""
    out = []
    for row in rows:
        r = {k: v for k, v in row.items() if k not in ("image", "images", "image_path")}
        for k, v in list(r.items()):
            if isinstance(v, float) and math.isinf(v):
                r[k] = "inf"
        out.append(r)
    return out


# ------------------------------------------------------------------------------------------- sweeps

def sweep_values(start: float, stop: float, step: float, kind: str = "int") -> list:
    """start, start+step, ... ≤ stop (at most 16 values)."""
    if step <= 0:
        raise ValueError(f"step {step} must be > 0")
    if stop < start:
        raise ValueError(f"range end {stop} is below its start {start}")
    values, v = [], start
    while v <= stop + 1e-9 and len(values) < 16:
        values.append(int(round(v)) if kind == "int" else round(float(v), 6))
        v += step
    return sorted(set(values), key=values.index)


def sweep(
    prompt: str, seed: int, base: dict, section: str, param: str, values: list, model: str | None = None,
    n_prompts: int = 1, on_step: Callable[[int, int, str], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[dict]:
    """``base`` (the baseline variant) against base + {section: {param: value}} for each value.

    section "variant" sweeps a top-level key (steps, guidance). Returns rows: label, value, variant,
    latency_s, speedup, psnr_vs_baseline, ssim_vs_baseline, unet_evals, images (first prompt's image).
    """
    if not values:
        raise ValueError("give at least one value to sweep")
    prompts = [prompt] if n_prompts <= 1 else _sweep_prompts(prompt, n_prompts)
    variants = [dict(base, name="baseline")]
    for value in values:
        v = json.loads(json.dumps(base))
        if section == "variant":
            v[param] = value
        else:
            v[section] = {**(v.get(section) or {}), param: value}
        v["name"] = f"{section}.{param}={value}" if section != "variant" else f"{param}={value}"
        variants.append(v)
    parse_variants(variants[:1] + variants[1:2], model)  # bad input fails before any work
    per_prompt = []
    for i, p in enumerate(prompts):
        rows = []
        for chunk_start in range(1, len(variants), MAX_VARIANTS):
            chunk = [variants[0]] + variants[chunk_start:chunk_start + MAX_VARIANTS]
            got = compare(p, seed + i, chunk, model, on_step, cancel)
            rows.extend(got if not rows else got[1:])
        per_prompt.append(rows)
    out = []
    for j, variant in enumerate(variants):
        cols = [rows[j] for rows in per_prompt]
        psnrs = [c["psnr_vs_baseline"] for c in cols if c["psnr_vs_baseline"] is not None]
        latency = float(np.median([c["latency_s"] for c in cols]))
        out.append({
            "label": variant["name"], "section": section, "param": param,
            "value": None if j == 0 else values[j - 1], "variant": cols[0]["variant"],
            "latency_s": latency, "unet_evals": cols[0]["unet_evals"],
            "psnr_vs_baseline": (float(np.mean([min(p, 100.0) for p in psnrs])) if psnrs else None),
            "ssim_vs_baseline": (float(np.mean([c["ssim_vs_baseline"] for c in cols]))
                                 if j and cols[0]["ssim_vs_baseline"] is not None else None),
            "image": cols[0]["image"], "baseline_image": per_prompt[0][0]["image"],
        })
    for row in out:
        row["speedup"] = out[0]["latency_s"] / row["latency_s"]
    return out


def _sweep_prompts(prompt: str, n: int) -> list[str]:
    from backend.world.prompts import prompt_set

    scenes = prompt_set("single")
    return [prompt] + [scenes[i * len(scenes) // n].caption for i in range(1, n)]


def pareto_front(rows: list[dict], x: str = "latency_s", y: str = "psnr_vs_baseline") -> list[dict]:
    """Rows not dominated: no other row is both faster (lower x) and better (higher y)."""
    pts = [r for r in rows if r.get(x) is not None and r.get(y) is not None]
    pts.sort(key=lambda r: (r[x], -r[y]))
    front, best = [], -math.inf
    for r in pts:
        if r[y] > best:
            front.append(r)
            best = r[y]
    return front


def _store_variants(rows: list[dict]) -> list[dict]:
    """Rows in the shape of Store.variants() (what backend.reports works on)."""
    keys = ("latency_s", "unet_evals", "speedup", "psnr_vs_baseline", "ssim_vs_baseline", "full_steps",
            "cached_steps", "kernels")
    return [{"idx": i, "name": r.get("name") or r.get("label"), "status": "done", "is_baseline": i == 0,
             "config": r["variant"], "metrics": {k: r[k] for k in keys if r.get(k) is not None}}
            for i, r in enumerate(rows)]


def curves_figure(rows: list[dict]):
    """Latency vs PSNR (vs the baseline) with the Pareto front and per-method curves (backend.reports.plots)."""
    from backend.reports import plots

    df = plots.results_frame(_store_variants(rows))
    return plots.fig_pareto(df, "psnr_vs_baseline")


def method_curves_figure(rows: list[dict]):
    """PSNR vs each method's knob (DeepCache N, bits, LCM steps), or None."""
    from backend.reports import plots

    return plots.fig_method_curves(plots.results_frame(_store_variants(rows)), "psnr_vs_baseline")


# ------------------------------------------------------------------------------------------ reports

def save_rows(store_root: str | Path, rows: list[dict], prompt: str, seed: int, source: str) -> str:
    """Record a comparison (or a sweep) as a run of the results store; returns the run id."""
    from backend.runs.runner import environment
    from backend.runs.store import Store

    run_id = time.strftime("wb-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
    store = Store(store_root)
    try:
        variants = _store_variants(rows)
        store.create_run(run_id, [dict(v["config"], name=v["name"]) for v in variants], [prompt], [int(seed)],
                         settings={"source": source, "latency": "one timed generation per variant, after a "
                                   "one-step warm-up of each new pipeline"},
                         environment=environment(), name=f"workbench {source}")
        for v, row in zip(variants, rows, strict=True):
            store.save_variant(run_id, v["idx"], np.asarray(row["image"])[None], [prompt], [int(seed)], v["metrics"])
        store.set_run_status(run_id, "done")
    finally:
        store.close()
    return run_id


def export_report(rows: list[dict], store_root: str | Path, prompt: str, seed: int,
                  source: str = "playground") -> tuple[Path, Path]:
    """Store the comparison as a run, then export it with backend.reports: (HTML report, zip bundle)."""
    from backend.reports.export import export_report as export_run

    if not rows:
        raise ValueError("nothing to export: run a comparison or a sweep first")
    run_id = save_rows(store_root, rows, prompt, seed, source)
    paths = export_run(store_root, Path(store_root) / "reports" / run_id / "report.html", run_id)
    return paths.html, paths.zip


# --------------------------------------------------------------------------------------- fine-tunes

JOB_KINDS = {
    "efficientdm": ("backend.methods.quant.config:FinetuneConfig", "quant"),
    "lcd": ("backend.methods.consistency.config:DistillConfig", "consistency"),
    "rg-lcd": ("backend.methods.consistency.config:DistillConfig", "consistency"),
}
PRESET_NAMES = ("1-minute demo", "quality")
PRESETS: dict[tuple[str, str], dict] = {
    ("efficientdm", "1-minute demo"): {"weight_bits": 4, "act_bits": 8, "minutes": 0.6, "train_steps": 5,
                                       "batch_size": 2, "lora_rank": 8, "checkpoint_every_s": 30.0},
    ("efficientdm", "quality"): {"weight_bits": 4, "act_bits": 8, "minutes": 15.0},
    ("lcd", "1-minute demo"): {"minutes": 0.6, "batch_size": 8, "data_pool": 64, "beta": 0.0,
                               "checkpoint_every_s": 30.0},
    ("lcd", "quality"): {"minutes": 10.0, "beta": 0.0},
    ("rg-lcd", "1-minute demo"): {"minutes": 0.6, "batch_size": 8, "data_pool": 64, "reward": "shapes",
                                  "beta": 1.0, "checkpoint_every_s": 30.0},
    ("rg-lcd", "quality"): {"minutes": 10.0, "reward": "shapes", "beta": 1.0},
}
TERMINAL = ("done", "cancelled", "failed", "interrupted")


def _config_class(kind: str):
    import importlib

    if kind not in JOB_KINDS:
        raise ValueError(f"fine-tune kind {kind!r} is not allowed; allowed: {', '.join(JOB_KINDS)}")
    module, _, cls = JOB_KINDS[kind][0].partition(":")
    return getattr(importlib.import_module(module), cls)


def job_params(kind: str) -> list[dict]:
    """The declared settings of a fine-tune kind (the advanced-settings form)."""
    return [p for p in _config_class(kind).describe() if p.get("ui", True)]


def preset(kind: str, name: str) -> dict:
    """Every setting of ``kind`` with the preset's values over the defaults."""
    if name not in PRESET_NAMES:
        raise ValueError(f"preset {name!r} is not allowed; allowed: {', '.join(PRESET_NAMES)}")
    values = {p["name"]: p["default"] for p in job_params(kind)}
    values.update(PRESETS[(kind, name)])
    return values


class FileFlag:
    """A cancel flag another process (or a restarted UI) can set: the file exists."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def is_set(self) -> bool:
        return self.path.exists()

    def set(self) -> None:
        self.path.touch()


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


STORE_STATUS = {"starting": "queued", "running": "running", "done": "done", "cancelled": "cancelled",
                "failed": "failed", "interrupted": "failed"}


def _mirror(store_root: Path, job_id: str, create: dict | None = None, **fields) -> None:
    """Keep the job's row in the results store (backend.runs.store) in step with job.json."""
    try:
        from backend.runs.store import Store

        store = Store(store_root)
    except Exception:  # the store is a mirror: a problem there must not stop a fine-tune
        return
    try:
        if create is not None:
            store.create_job(create["kind"], {"model": create["model"], **create["settings"]},
                             out_dir=create["checkpoint"], job_id=job_id, status="queued")
            return
        status = fields.get("status")
        progress = {k: fields[k] for k in ("step", "loss", "eta_s", "elapsed_s") if k in fields}
        error = fields.get("error") or ("interrupted: the worker process ended" if status == "interrupted" else None)
        store.update_job(job_id, status=STORE_STATUS.get(status) if status else None, progress=progress or None,
                         error=error, pid=fields.get("pid"))
    except Exception:
        pass
    finally:
        store.close()


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, PermissionError, ValueError):
        return False
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class JobManager:
    """Fine-tune jobs under ``root/jobs/<id>/``: job.json (spec and state), progress.jsonl, checkpoint/.

    Each job runs in its own Python worker process (a fresh interpreter, as multiprocessing's spawn
    start method makes, in its own session so that a UI restart does not kill it); cancel is a flag file.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self._procs: dict[str, subprocess.Popen] = {}

    def start(self, kind: str, model: str, settings: dict | None = None, threads: int = 1) -> str:
        """Validate, write the job spec, launch the worker; returns the job id. ValueError on bad input."""
        from backend.models import load_pipeline

        cfg = _config_class(kind).from_dict({k: v for k, v in (settings or {}).items()
                                             if k in {p["name"] for p in _config_class(kind).describe()}})
        if kind == "rg-lcd" and cfg.reward == "none":
            raise ValueError("rg-lcd needs a reward model; allowed: " + ", ".join(r for r in ("shapes", "clip")))
        load_pipeline(model)  # ModelError now, not in the worker
        job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        job_dir = self.root / job_id
        job_dir.mkdir(parents=True)
        spec = {"id": job_id, "kind": kind, "model": model, "settings": cfg.to_dict(), "threads": int(threads),
                "status": "starting", "created": time.time(), "updated": time.time(),
                "checkpoint": str(job_dir / "checkpoint"), "section": JOB_KINDS[kind][1]}
        _write_json(job_dir / "job.json", spec)
        _mirror(self.root.parent, job_id, create=spec)
        log = open(job_dir / "worker.log", "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([sys.executable, "-m", "backend.runs.workbench", str(job_dir)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                cwd=str(Path(__file__).resolve().parents[2]))
        log.close()
        self._procs[job_id] = proc
        spec["pid"] = proc.pid
        self._update(job_id, pid=proc.pid)
        return job_id

    def _dir(self, job_id: str) -> Path:
        d = self.root / str(job_id)
        if not job_id or "/" in str(job_id) or not (d / "job.json").is_file():
            raise ValueError(f"unknown job {job_id!r}")
        return d

    def _update(self, job_id: str, **fields) -> dict:
        path = self._dir(job_id) / "job.json"
        data = json.loads(path.read_text())
        data.update(fields, updated=time.time())
        _write_json(path, data)
        _mirror(self.root.parent, job_id, **fields)
        return data

    def get(self, job_id: str) -> dict:
        d = self._dir(job_id)
        data = json.loads((d / "job.json").read_text())
        if data["status"] not in TERMINAL:
            proc = self._procs.get(job_id)
            alive = proc.poll() is None if proc is not None else _pid_alive(data.get("pid"))
            if not alive:
                time.sleep(0.2)  # the worker may just have written its final state
                data = json.loads((d / "job.json").read_text())
                if data["status"] not in TERMINAL:
                    status = "cancelled" if (d / "cancel").exists() else "interrupted"
                    data = self._update(job_id, status=status,
                                        error=None if status == "cancelled" else "the worker process ended early; "
                                        "see worker.log")
        progress = self.progress(job_id)
        last = progress[-1] if progress else {}
        data["step"] = last.get("step")
        data["loss"] = last.get("loss")
        minutes = data["settings"].get("minutes") or 0
        if data["status"] in TERMINAL:
            data["eta_s"] = 0.0
        elif "eta_s" in last:
            data["eta_s"] = last["eta_s"]
        elif minutes:
            data["eta_s"] = max(0.0, minutes * 60 - last.get("elapsed_s", 0.0))
        else:
            data["eta_s"] = None
        return data

    def jobs(self) -> list[dict]:
        """Every job, newest first."""
        out = []
        for d in sorted(self.root.iterdir(), reverse=True):
            if (d / "job.json").is_file():
                try:
                    out.append(self.get(d.name))
                except (ValueError, json.JSONDecodeError):
                    continue
        return out

    def progress(self, job_id: str) -> list[dict]:
        path = self._dir(job_id) / "progress.jsonl"
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written
            if "loss" not in row and "distill" in row:
                row["loss"] = row["distill"]
            rows.append(row)
        return rows

    def cancel(self, job_id: str) -> dict:
        """Cooperative cancel (the trainer saves a checkpoint and stops); a worker still starting up is ended."""
        d = self._dir(job_id)
        FileFlag(d / "cancel").set()
        data = json.loads((d / "job.json").read_text())
        if data["status"] == "starting" and data.get("pid"):
            import signal

            try:
                os.killpg(int(data["pid"]), signal.SIGTERM)  # its own session: the worker and its children
            except (ProcessLookupError, PermissionError):
                pass
            proc = self._procs.get(job_id)
            if proc is not None:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            self._update(job_id, status="cancelled", finished=time.time())
        return self.get(job_id)

    def wait(self, job_id: str, timeout: float = 60.0) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            data = self.get(job_id)
            if data["status"] in TERMINAL:
                return data
            time.sleep(0.25)
        return self.get(job_id)

    def checkpoints(self, model: str | None = None, section: str | None = None) -> list[dict]:
        """Finished checkpoints (label, section, path, model), newest first; of one model when given."""
        out = []
        for job in self.jobs():
            path = Path(job["checkpoint"])
            if job["status"] != "done" or not path.is_dir():
                continue
            if model is not None and job["model"] != model:
                continue
            if section is not None and job["section"] != section:
                continue
            out.append({"label": f"{job['kind']} {job['id']} ({job['model']})", "section": job["section"],
                        "path": str(path), "model": job["model"], "kind": job["kind"]})
        return out


def _worker(job_dir: Path) -> int:
    """The worker process: run the job in job.json, stream progress, write the final state."""
    import torch

    from backend.runs.jobs import JobCancelled

    spec = json.loads((job_dir / "job.json").read_text())
    torch.set_num_threads(max(1, int(spec.get("threads", 1))))
    flag = FileFlag(job_dir / "cancel")
    log = (job_dir / "progress.jsonl").open("a")

    def update(**fields) -> None:
        data = json.loads((job_dir / "job.json").read_text())
        data.update(fields, updated=time.time())
        _write_json(job_dir / "job.json", data)
        _mirror(job_dir.parent.parent, spec["id"], **fields)

    last_mirror = [0.0]

    def on_progress(fields: dict) -> None:
        log.write(json.dumps(fields, default=float) + "\n")
        log.flush()
        if time.monotonic() - last_mirror[0] > 5:
            last_mirror[0] = time.monotonic()
            row = dict(fields)
            row.setdefault("loss", row.get("distill"))
            _mirror(job_dir.parent.parent, spec["id"], **row)

    try:
        from backend.models import load_pipeline
        from backend.runs.jobs import JobControl

        job = JobControl(on_progress=on_progress, cancel=flag)
        pipe = load_pipeline(spec["model"])
        out = Path(spec["checkpoint"])
        if flag.is_set():
            raise JobCancelled("cancelled before training started")
        update(status="running", pid=os.getpid(), started=time.time())
        if spec["kind"] == "efficientdm":
            from backend.methods.quant.config import FinetuneConfig
            from backend.methods.quant.train import finetune

            summary = finetune(pipe, FinetuneConfig.from_dict(spec["settings"]), out, job=job)
            summary.pop("student", None)
        else:
            from backend.methods.consistency.config import DistillConfig
            from backend.methods.consistency.distill import distill

            summary = distill(pipe, DistillConfig.from_dict(spec["settings"]), out, job)
        status = summary.get("status", "done")
        update(status="cancelled" if status == "cancelled" else "done",
               summary=json.loads(json.dumps(summary, default=str)), finished=time.time())
        return 0
    except BaseException as exc:  # the UI shows why; the traceback is in worker.log
        import traceback

        traceback.print_exc()
        update(status="cancelled" if flag.is_set() else "failed", error=f"{type(exc).__name__}: {exc}",
               finished=time.time())
        return 1
    finally:
        log.close()


__all__ = [
    "DEVICE_LOCK", "GenerationCancelled", "JobManager", "MODELS", "PRESETS", "PRESET_NAMES", "SCHEDULERS",
    "all_method_params", "cached_pipeline", "compare", "curves_figure", "export_report", "job_params",
    "method_params", "metrics_line", "model_defaults_for", "pareto_front", "preset", "sweep", "sweep_values",
]

if __name__ == "__main__":
    sys.exit(_worker(Path(sys.argv[1])))
