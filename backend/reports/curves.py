"""The workbench's curves: one or two method parameters swept against the baseline through
:mod:`backend.runs.sweep` (the same engine, timing and results store as ``python -m backend sweep``), read back
as a table by :func:`backend.reports.plots.results_frame` with its Pareto front."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from backend.core import JobControl
from backend.reports import plots
from backend.runs.compare import DEVICE_LOCK, stop_inside
from backend.runs.store import Store
from backend.runs.sweep import parse_spec, run_sweep

MAX_POINTS = 16
RUNNER = {"repeats": 3, "measure_macs": False}  # the sweep's timing protocol: 3 interleaved rounds vs the baseline


def sweep_values(start: float, stop: float, step: float, kind: str = "int") -> list:
    """start, start+step, ... ≤ stop (at most 16 values); ValueError on an empty or backwards range."""
    if not all(np.isfinite([start, stop, step])):
        raise ValueError(f"range {start}..{stop} step {step}: every bound must be a finite number")
    if step <= 0:
        raise ValueError(f"step {step} must be > 0")
    if stop < start:
        raise ValueError(f"range end {stop} is below its start {start}")
    values, v = [], start
    while v <= stop + 1e-9 and len(values) < MAX_POINTS:
        values.append(int(round(v)) if kind == "int" else round(float(v), 6))
        v += step
    return sorted(set(values), key=values.index)


def grid_key(section: str, param: str) -> str:
    """A sweep grid key: a top-level Variant key (section "variant") or section.param."""
    return param if section == "variant" else f"{section}.{param}"


def run_curves(store_root: str | Path, base: dict, grid: dict[str, list], prompts: list[str], seed: int,
               cancel: threading.Event | None = None, on_progress=None, limits=None) -> str:
    """Sweep ``grid`` (grid keys → values; one or two keys) over ``base`` on ``prompts`` into the store's
    ``curves`` run directory; returns the run id. A rerun of the same sweep resumes (finished points kept).

    The baseline is ``base`` with every method off; cancel, or the limits' time limit, stops it within a layer
    (GenerationCancelled); the points finished by then are kept.
    """
    if not 1 <= len(grid) <= 2:
        raise ValueError(f"{len(grid)} parameters given; allowed: one or two")
    n = int(np.prod([len(v) for v in grid.values()]))
    if n > MAX_POINTS:
        raise ValueError(f"{n} grid points; allowed: at most {MAX_POINTS} (fewer values or a coarser step)")
    spec = {"name": "curves " + " × ".join(grid), "base": {k: v for k, v in base.items() if k != "name"},
            "grid": grid, "prompts": list(prompts), "seed": int(seed),
            "runner": {**RUNNER, "batch_size": len(prompts)}}
    sweep = parse_spec(spec)
    deadline = None
    if limits is not None:
        for v in sweep.variants:
            limits.check(v)
        deadline = None if limits.time_limit_s is None else time.monotonic() + limits.time_limit_s
    with DEVICE_LOCK, stop_inside(cancel, deadline):
        outcome = run_sweep(sweep, Path(store_root) / "curves", job=JobControl(cancel=cancel),
                            on_progress=on_progress)
    return outcome.run_id


def _knob(config: dict, key: str):
    section, _, name = key.partition(".")
    if not name:
        return config.get(section)
    return (config.get(section) or {}).get(name)


def curve_points(store_root: str | Path, run_id: str, keys: list[str]) -> pd.DataFrame:
    """One row per finished variant (plots.results_frame) with a column per grid key and ``on_front`` for the
    points on the latency-vs-PSNR Pareto front."""
    with Store(Path(store_root) / "curves", create=False) as store:
        variants = store.variants(run_id)
    df = plots.results_frame(variants)
    if df.empty:
        return df
    configs = {v["idx"]: v["config"] for v in variants}
    for key in keys:
        df[key] = [None if base else _knob(configs[i], key) for i, base in zip(df["idx"], df["is_baseline"],
                                                                              strict=True)]
    return df


def front(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The Pareto front (lower latency, better ``metric``) of the non-baseline points."""
    if df.empty or metric not in df:
        return df.iloc[0:0]
    return plots.pareto_front(df[~df["is_baseline"]], metric)


def point_images(store_root: str | Path, run_id: str, idx: int) -> tuple[np.ndarray, np.ndarray]:
    """(baseline image, variant image) of the first prompt, uint8."""
    with Store(Path(store_root) / "curves", create=False) as store:
        base = store.load_images(run_id, 0)[0]
        image = store.load_images(run_id, idx)[0]
    return (base * 255).round().astype(np.uint8), (image * 255).round().astype(np.uint8)
