"""A workbench comparison kept as a run of the results store, and its report (backend.reports.export) under a
unique name: ``STORE/reports/<kind>-<run id>-<time>/speedlab-<kind>-<time>.html`` and the same stem ``.zip``."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np

from backend.reports.export import ReportPaths, export_report
from backend.runs.store import Store

METRIC_KEYS = ("latency_s", "unet_evals", "speedup", "psnr_vs_baseline", "ssim_vs_baseline", "full_steps",
               "cached_steps", "kernels", "prompt_accuracy", "attr_accuracy")
TIMING_KEYS = ("latency_ci", "latency_p90_s", "speedup_ci", "timing_noisy")
ONE_RUN = "one image per column, timed once, after a one-step warm-up of each new pipeline (no interval)"


def settings(rows: list[dict]) -> dict:
    """What backend.reports.export.timing_text reads: the rounds and how they were timed."""
    from backend.runs.compare import TIMING

    rounds = max((r["timing"]["repeats"] for r in rows if r.get("timing")), default=0)
    return {"warmup": 1, "repeats": rounds or 1, "timing": TIMING if rounds else ONE_RUN, "batch_size": 1,
            "executor": "local (workbench)"}


def store_variants(rows: list[dict]) -> list[dict]:
    """Comparison rows (without errors) in the shape of Store.variants() (what backend.reports works on)."""
    return [{"idx": i, "name": r["name"], "status": "done", "is_baseline": i == 0, "config": r["variant"],
             "metrics": {**{k: r[k] for k in METRIC_KEYS if r.get(k) is not None},
                         **{k: v for k, v in (r.get("timing") or {}).items() if k in TIMING_KEYS and v is not None}}}
            for i, r in enumerate(r for r in rows if "error" not in r)]


def save_comparison(store_root: str | Path, rows: list[dict], prompt: str, seed: int) -> str:
    """Record a comparison as a run of the results store at ``store_root``; returns the run id."""
    from backend.runs.runner import environment

    ok = [r for r in rows if "error" not in r]
    if not ok or "error" in rows[0]:
        raise ValueError("nothing to export: the comparison has no baseline image (generate first)")
    run_id = time.strftime("playground-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
    variants = store_variants(rows)
    with Store(store_root) as store:
        store.create_run(run_id, [dict(v["config"], name=v["name"]) for v in variants], [prompt], [int(seed)],
                         settings=settings(ok), environment=environment(), name="workbench playground")
        for v, row in zip(variants, ok, strict=True):
            store.save_variant(run_id, v["idx"], np.asarray(row["image"])[None], [prompt], [int(seed)], v["metrics"])
        store.set_run_status(run_id, "done")
    return run_id


def export(rundir: str | Path, run_id: str, kind: str, out_root: str | Path) -> ReportPaths:
    """The run's HTML report and zip bundle, named ``<kind>-<run id>-<time>`` so no export overwrites another."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(out_root) / "reports" / f"{kind}-{run_id}-{stamp}" / f"speedlab-{kind}-{stamp}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    return export_report(rundir, out, run_id)
