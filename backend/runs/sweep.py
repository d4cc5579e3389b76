"""Run a grid of variants on the same prompts and seeds into a results store: python -m backend sweep SPEC --out RUNDIR.

A spec (YAML or JSON) is a base variant, a grid over its keys (the Cartesian product) and/or a list of
explicit variants; the baseline (the base variant with every method off, or ``baseline``) runs first:

    name: deepcache-grid
    base: {model: shapes, steps: 50}            # any Variant key (README: the Variant)
    prompts: {set: hard, n: 16}                 # or a list of prompt strings (default set: hard)
    seed: 0                                     # prompt i uses seed + i (or seeds: [...])
    grid:                                       # dotted Variant keys -> lists of values
      deepcache.interval: [2, 3, 4, 5, 6, 8]
      deepcache.branch: [0, 2]
    variants:                                   # optional extra variants (overrides on base)
      - {name: w8a8, quant: {method: ptq, weight_bits: 8, act_bits: 8}}
    runner: {repeats: 3, batch_size: 16, measure_macs: true}   # repeats: interleaved timing rounds vs the baseline

Rerunning the same spec into the same RUNDIR resumes: finished variants are kept, the rest run.
Executors: ``local`` (default, one process) or ``ray`` (one variant per task, one GPU each when the
cluster has GPUs; ``pip install ray``; ``--address`` of a running cluster, else a local instance).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.methods import registry
from backend.methods.params import MAX_SEED
from backend.variant import Variant, VariantError, fields, read_text_file

SPEC_KEYS = ("name", "base", "baseline", "grid", "variants", "prompts", "seed", "seeds", "runner")
PROMPT_KEYS = ("set", "n")
RUNNER_DEFAULTS = {"repeats": 3, "batch_size": 16, "measure_macs": True}
WARMUP = 1  # runner.time_variants warms up once before the timed rounds
TIMING = "interleaved rounds of one image with the baseline after one warm-up; speedup per round (median, 95% interval)"
EXECUTORS = ("local", "ray")
MAX_VARIANTS = 1000


class SpecError(ValueError):
    """A sweep spec that cannot be used; the message names the bad key or value and what is allowed."""


@dataclass
class Sweep:
    """A parsed spec: variants (the baseline first), prompts, seeds and runner settings."""

    name: str
    variants: list[Variant]
    prompts: list[str]
    seeds: list[int]
    runner: dict = field(default_factory=lambda: dict(RUNNER_DEFAULTS))
    spec: dict = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        """Stable id of what is measured: the same spec resumes the same run."""
        payload = json.dumps({"variants": [v.to_dict() for v in self.variants], "prompts": self.prompts,
                              "seeds": self.seeds, "runner": self.runner}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:12]


def load_spec(path: str | Path) -> dict:
    """Read a YAML or JSON spec file into plain data."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SpecError(f"sweep spec {str(path)!r} is not an existing file")
    text = read_text_file(p, "sweep spec")
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        kind = "JSON" if p.suffix.lower() == ".json" else "YAML"
        raise SpecError(f"sweep spec {p}: malformed {kind}: {first}") from exc
    if not isinstance(data, dict):
        raise SpecError(f"sweep spec {p}: expected a mapping with keys {', '.join(SPEC_KEYS)}")
    return data


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        elif not isinstance(node[part], dict):
            raise SpecError(f"grid key {key!r}: {part!r} is not a section")
        node = node[part]
    node[parts[-1]] = value


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "+".join(f"{k}{_short(v)}" for k, v in value.items())
    if isinstance(value, str) and "/" in value:
        return Path(value).name
    return str(value)


def _auto_name(assignment: dict) -> str:
    return " ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in assignment.items())


def _variant(data: dict, where: str) -> Variant:
    try:
        return Variant.from_dict(data)
    except VariantError as exc:
        raise SpecError(f"{where}: {exc}") from exc


def _prompts(spec: dict) -> list[str]:
    from backend.world.prompts import DEFAULT_SET, eval_prompts

    raw = spec.get("prompts", {"set": DEFAULT_SET, "n": 16})
    if isinstance(raw, list):
        if not raw or not all(isinstance(p, str) and p.strip() for p in raw):
            raise SpecError("prompts: a list of non-empty prompt strings is needed")
        return list(raw)
    if not isinstance(raw, dict):
        raise SpecError(f"prompts: {raw!r} is not allowed; allowed: a list of prompts or {{set: NAME, n: N}}")
    unknown = sorted(set(raw) - set(PROMPT_KEYS))
    if unknown:
        raise SpecError(f"prompts: unknown key {unknown[0]!r}; allowed: {', '.join(PROMPT_KEYS)}")
    n = raw.get("n", 16)
    if isinstance(n, bool) or not isinstance(n, int):
        raise SpecError(f"prompts.n: {n!r} must be a whole number")
    try:
        return eval_prompts(raw.get("set", DEFAULT_SET), n)
    except KeyError as exc:
        raise SpecError(f"prompts.set: {raw.get('set')!r} is not a prompt set ({exc})") from exc
    except ValueError as exc:
        raise SpecError(f"prompts: {exc}") from exc


def parse_spec(spec: dict, limit_prompts: int | None = None) -> Sweep:
    """A spec (plain data) -> a Sweep; SpecError names the first bad key or value."""
    if not isinstance(spec, dict):
        raise SpecError(f"a sweep spec must be a mapping, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise SpecError(f"unknown sweep spec key {unknown[0]!r}; allowed: {', '.join(SPEC_KEYS)}")
    base = spec.get("base", {})
    if not isinstance(base, dict):
        raise SpecError(f"base: expected a variant mapping, got {base!r}")
    base = {k: v for k, v in base.items() if k != "name"}
    _variant(base, "base")

    grid = spec.get("grid", {})
    extra = spec.get("variants", [])
    if not isinstance(grid, dict):
        raise SpecError(f"grid: expected a mapping of dotted variant keys to lists, got {grid!r}")
    if not isinstance(extra, list):
        raise SpecError(f"variants: expected a list of variant mappings, got {extra!r}")
    if not grid and not extra:
        raise SpecError("empty grid: give grid (dotted variant keys -> lists of values) and/or variants")
    keys_allowed = [k for k in (*fields(), *registry.sections()) if k != "name"]
    for key, values in grid.items():
        if not isinstance(key, str) or key.split(".")[0] not in keys_allowed:
            allowed = ", ".join(sorted(keys_allowed))
            raise SpecError(f"grid: unknown key {key!r}; allowed: a variant key ({allowed}) or section.knob "
                            f"(e.g. deepcache.interval)")
        if "." in key and key.split(".")[0] not in registry.sections():
            raise SpecError(f"grid: {key!r}: only method sections ({', '.join(registry.sections())}) have sub-keys")
        if not isinstance(values, list):
            raise SpecError(f"grid.{key}: expected a list of values, got {values!r}")
        if not values:
            raise SpecError(f"empty grid: grid.{key} has no values")

    baseline_over = spec.get("baseline", {})
    if not isinstance(baseline_over, dict):
        raise SpecError(f"baseline: expected a variant mapping, got {baseline_over!r}")
    baseline_data = {k: v for k, v in base.items() if k not in registry.sections()}
    baseline_data = _merge(baseline_data, baseline_over)
    baseline_data["name"] = baseline_over.get("name", "baseline")
    variants = [_variant(baseline_data, "baseline")]

    keys = list(grid)
    combos = list(itertools.product(*(grid[k] for k in keys))) if keys else []
    if len(combos) + len(extra) > MAX_VARIANTS:
        raise SpecError(f"grid: {len(combos) + len(extra)} variants; allowed: at most {MAX_VARIANTS}")
    for combo in combos:
        data = copy.deepcopy(base)
        assignment = dict(zip(keys, combo, strict=True))
        for key, value in assignment.items():
            _set_dotted(data, key, value)
        data["name"] = _auto_name(assignment)
        variants.append(_variant(data, f"grid point {data['name']!r}"))
    for i, over in enumerate(extra):
        if not isinstance(over, dict):
            raise SpecError(f"variants[{i}]: expected a variant mapping, got {over!r}")
        data = _merge(base, over)
        data["name"] = over.get("name") or f"variant-{i}"
        variants.append(_variant(data, f"variants[{i}]"))
    names = [v.name for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"variant name {dupes[0]!r} is used twice; names must be unique")

    prompts = _prompts(spec)
    if limit_prompts is not None:
        prompts = prompts[:limit_prompts]
    if "seeds" in spec:
        seeds = spec["seeds"]
        if not isinstance(seeds, list) or len(seeds) < len(prompts) or not all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds):
            raise SpecError(f"seeds: a list of {len(prompts)} whole numbers from 0 to {MAX_SEED} (one per prompt) "
                            "is needed")
        seeds = seeds[:len(prompts)]
    else:
        seed = spec.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED - len(prompts):
            raise SpecError(f"seed: {seed!r} is out of range; allowed: a whole number from 0 to "
                            f"{MAX_SEED - len(prompts)}")
        seeds = [seed + i for i in range(len(prompts))]

    runner = spec.get("runner", {})
    if not isinstance(runner, dict):
        raise SpecError(f"runner: expected a mapping, got {runner!r}")
    unknown = sorted(set(runner) - set(RUNNER_DEFAULTS))
    if unknown:
        raise SpecError(f"runner: unknown key {unknown[0]!r}; allowed: {', '.join(RUNNER_DEFAULTS)}")
    runner = {**RUNNER_DEFAULTS, **runner}
    for key in ("repeats", "batch_size"):
        value = runner[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "batch_size" else 0):
            raise SpecError(f"runner.{key}: {value!r} must be a whole number ≥ {1 if key == 'batch_size' else 0}")
    if not isinstance(runner["measure_macs"], bool):
        raise SpecError(f"runner.measure_macs: expected true or false, got {runner['measure_macs']!r}")
    name = spec.get("name") or "sweep"
    return Sweep(str(name), variants, prompts, [int(s) for s in seeds], runner, spec)


# ---- measuring one variant (runs in the driver or in a Ray worker) --------------------------------------------

def measure(variant: dict, prompts: list[str], seeds: list[int], runner: dict,
            on_progress: Callable[[int, int], None] | None = None,
            baseline: dict | None = None) -> tuple[np.ndarray, dict]:
    """Generate and measure one variant: uint8 images, the deterministic cost (runner.run_variant) and, with
    runner.repeats > 0, wall-clock time in interleaved rounds against ``baseline`` (the sweep's baseline;
    the baseline itself is timed against itself, so its speedup interval shows the machine's noise)."""
    from backend.runs import runner as runner_mod
    from backend.runs.build import build_pipeline
    from backend.runs.store import to_uint8

    v = Variant.from_dict(variant)
    pipe = build_pipeline(v)
    result = runner_mod.run_variant(v, prompts, seeds, batch_size=runner["batch_size"],
                                    measure_macs=runner["measure_macs"], on_progress=on_progress, pipe=pipe)
    if runner["repeats"] > 0:
        b = Variant.from_dict(baseline if baseline is not None else variant)
        base_pipe = pipe if b.to_dict() == v.to_dict() else build_pipeline(b)
        timing = runner_mod.time_variants({"baseline": (b, base_pipe), "variant": (v, pipe)}, prompts[0], seeds[0],
                                          runner["repeats"], baseline="baseline")["variant"]
        result.metrics.update({k: val for k, val in timing.items() if k in runner_mod.TIMING_KEYS})
    return to_uint8(result.images), result.metrics


def _quality(variant: Variant, images_u8: np.ndarray, metrics: dict, prompts: list[str], seeds: list[int],
             baseline: tuple[np.ndarray, dict] | None) -> dict:
    """Quality metrics on the saved (uint8) images, paired against the same-seed baseline."""
    from backend.runs.runner import VariantResult, add_quality

    result = VariantResult(variant, images_u8.astype(np.float32) / 255.0, prompts, seeds, dict(metrics))
    if baseline is None:  # the baseline itself: compared with itself (psnr inf, ssim 1, deltas 0)
        base = result
    else:
        base = VariantResult(variant, baseline[0].astype(np.float32) / 255.0, prompts, seeds, dict(baseline[1]))
    add_quality(result, base)
    return result.metrics


# ---- executors ------------------------------------------------------------------------------------------------

class LocalExecutor:
    """Variants one after another in this process (models are loaded once and shared)."""

    name = "local"

    def run(self, sweep: Sweep, indices: list[int], on_images: Callable[[int, int], None],
            on_start: Callable[[int], bool] = lambda idx: True):
        for idx in indices:
            if not on_start(idx):  # claimed by another process
                continue
            done_before = [0]

            def progress(done: int, total: int, _d=done_before) -> None:
                on_images(done - _d[0], total)
                _d[0] = done

            try:
                images, metrics = measure(sweep.variants[idx].to_dict(), sweep.prompts, sweep.seeds, sweep.runner,
                                          on_progress=progress, baseline=sweep.variants[0].to_dict())
            except Exception as exc:  # noqa: BLE001 - a failing variant is recorded, the sweep goes on
                yield idx, None, exc
                continue
            yield idx, (images, metrics), None


def _ray_measure(variant, prompts, seeds, runner, baseline):
    import torch

    from backend.runs.runner import environment

    if torch.cuda.is_available() and variant.get("device", "cpu") == "cpu":
        variant, baseline = {**variant, "device": "cuda"}, {**baseline, "device": "cuda"}
    images, metrics = measure(variant, prompts, seeds, runner, baseline=baseline)
    env = environment()
    metrics["worker"] = f"{env.get('gpu') or env.get('cpu')}"
    return images, metrics


class RayExecutor:
    """One Ray task per variant (num_gpus=1 when the cluster has GPUs); results come back as they finish."""

    name = "ray"

    def __init__(self, address: str | None = None):
        try:
            import ray
        except ImportError as exc:
            raise ValueError("--executor ray needs Ray: pip install ray (or use --executor local)") from exc
        self.ray = ray
        self.address = address

    def run(self, sweep: Sweep, indices: list[int], on_images: Callable[[int, int], None],
            on_start: Callable[[int], bool] = lambda idx: True):
        ray = self.ray
        root = str(Path(__file__).resolve().parents[2])
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         runtime_env={"env_vars": {"PYTHONPATH": root, "OMP_NUM_THREADS": "1"}},
                         ignore_reinit_error=True)
            except ConnectionError as exc:
                raise ValueError(f"--address {self.address!r}: cannot connect to a Ray cluster ({exc})") from exc
        gpus = ray.cluster_resources().get("GPU", 0)
        indices = [i for i in indices if on_start(i)]  # those not claimed by another process
        task = ray.remote(num_gpus=1 if gpus > 0 else 0, num_cpus=1, max_retries=0)(_ray_measure)
        futures = {task.remote(sweep.variants[i].to_dict(), sweep.prompts, sweep.seeds, sweep.runner,
                               sweep.variants[0].to_dict()): i
                   for i in indices}
        while futures:
            ready, _ = ray.wait(list(futures), num_returns=1)
            idx = futures.pop(ready[0])
            try:
                images, metrics = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001
                yield idx, None, exc
                continue
            on_images(len(sweep.prompts), len(sweep.prompts))
            yield idx, (images, metrics), None


def make_executor(name: str, address: str | None = None):
    if name == "local":
        if address:
            raise ValueError("--address is only for --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address)
    raise ValueError(f"--executor {name!r} is not allowed; allowed: {', '.join(EXECUTORS)}")


# ---- the sweep ------------------------------------------------------------------------------------------------

@dataclass
class SweepOutcome:
    run_id: str
    rundir: Path
    done: list[int]
    failed: dict[int, str]
    skipped: list[int]
    unfinished: dict[int, str] = field(default_factory=dict)  # idx -> why it is not measured (another process has it)


def run_sweep(sweep: Sweep, rundir: str | Path, executor: str | Any = "local", address: str | None = None,
              job=None, on_progress: Callable[[int, int], None] | None = None) -> SweepOutcome:
    """Measure every variant not finished yet into RUNDIR's store (baseline first); resumable.

    job: an optional ``JobControl`` (progress, cancel between variants). on_progress(done_images, total_images).
    """
    from backend.core import JobCancelled
    from backend.models import check_source
    from backend.runs.runner import environment
    from backend.runs.store import Store, to_uint8

    for model in dict.fromkeys(v.model for v in sweep.variants):  # a missing model: refused before the store is made
        try:
            check_source(model)
        except ValueError as exc:
            raise SpecError(str(exc)) from None
    ex = make_executor(executor, address) if isinstance(executor, str) else executor
    store = Store(rundir)
    saved = [False]  # whether anything was measured into the store (else a new store is removed on failure)
    try:
        settings = {**sweep.runner, "warmup": WARMUP, "timing": TIMING, "executor": ex.name}
        run_id = store.create_run(sweep.run_id, [v.to_dict() for v in sweep.variants], sweep.prompts, sweep.seeds,
                                  settings, environment(), spec=sweep.spec, name=sweep.name)
        job_id = f"sweep-{run_id}"
        if not any(j["id"] == job_id for j in store.jobs(kind="sweep")):
            store.create_job("sweep", params={"spec": sweep.spec, "run_id": run_id}, out_dir=str(store.root),
                             job_id=job_id, status="running")
        pending = store.pending(run_id)
        skipped = [i for i in range(len(sweep.variants)) if i not in pending]
        total = len(pending) * len(sweep.prompts)
        done_images = [0]
        outcome = SweepOutcome(run_id, store.root, [], {}, skipped)

        def images_progress(delta: int, _total: int) -> None:
            done_images[0] += delta
            if on_progress:
                on_progress(done_images[0], total)

        def report(status: str | None = None) -> None:
            progress = {"step": len(skipped) + len(outcome.done) + len(outcome.failed),
                        "total": len(sweep.variants), "done": len(skipped) + len(outcome.done),
                        "failed": len(outcome.failed), "images": done_images[0], "images_total": total}
            store.update_job(job_id, status=status, progress=progress)
            if job is not None:
                job.report(**progress)

        report("running")
        if on_progress:
            on_progress(0, total)
        baseline = None
        if 0 not in pending:
            baseline = (to_uint8(store.load_images(run_id, 0)), store.variants(run_id)[0]["metrics"])
        order = ([0] if 0 in pending else []) + [i for i in pending if i != 0]

        def measure_batch(batch: list[int]) -> None:
            nonlocal baseline
            if baseline is None and batch[0] != 0:  # another process has the baseline: wait for it
                baseline = _await_baseline(store, run_id, job)
            for idx, payload, exc in ex.run(sweep, batch, images_progress, on_start=lambda i: store.claim(run_id, i)):
                if job is not None:
                    job.check()
                if exc is not None:
                    message = (f"{type(exc).__name__}: {exc}".strip().splitlines() or ["error"])[0]
                    store.mark_failed(run_id, idx, message)
                    outcome.failed[idx] = message
                    if idx == 0:
                        raise ValueError(f"the baseline variant failed, nothing to compare with: {message}")
                    report()
                    continue
                images, metrics = payload
                metrics = _quality(sweep.variants[idx], images, metrics, sweep.prompts, sweep.seeds,
                                   None if idx == 0 else baseline)
                store.save_variant(run_id, idx, images, sweep.prompts, sweep.seeds, metrics)
                saved[0] = True
                if idx == 0:
                    baseline = (images, metrics)
                outcome.done.append(idx)
                report()

        try:
            for batch in [order[:1], order[1:]] if order[:1] == [0] else [order]:
                if batch:
                    measure_batch(batch)
            # variants another process claimed while it ran: those it left when killed are measured here; those
            # it still holds are named (the run is done when every variant is)
            stale = [i for i in order if store.holder(run_id, i)[0] == "stale"]
            if stale:
                measure_batch(stale)
            for i in range(len(sweep.variants)):
                status, worker = store.holder(run_id, i)
                if status not in ("done", "failed"):
                    outcome.unfinished[i] = f"{status} in process {worker}" if worker else status
        except JobCancelled:
            _after_failure(store, run_id, job_id, "cancelled", report)
            raise
        except BaseException:
            _after_failure(store, run_id, job_id, "failed")
            if not saved[0] and store.created and not store.variants_done(run_id):
                store.discard()  # a new store with nothing measured: nothing is left behind
            raise
        status = "failed" if outcome.failed else "running" if outcome.unfinished else "done"
        store.set_run_status(run_id, status)
        report(status)
        return outcome
    finally:
        store.close()


def _after_failure(store, run_id: str, job_id: str, status: str, report: Callable | None = None) -> None:
    """Mark the run and this process's claims after a failure or cancel; a failure to do so (a full disk) is
    logged, never raised over the error that stopped the sweep."""
    try:
        store.reset_running(run_id)
        store.set_run_status(run_id, status)
        if report is not None:
            report(status)
        else:
            store.update_job(job_id, status=status)
    except (OSError, ValueError) as exc:
        logging.getLogger(__name__).warning("could not mark run %s %s: %s", run_id, status, exc)


def _await_baseline(store, run_id: str, job=None, poll_s: float = 0.5) -> tuple[np.ndarray, dict]:
    """The baseline's images and metrics once the process that claimed it has stored them."""
    from backend.runs.store import to_uint8

    while True:
        status, worker = store.holder(run_id, 0)
        if status == "done":
            return to_uint8(store.load_images(run_id, 0)), store.variants(run_id)[0]["metrics"]
        if status != "running":
            raise ValueError(f"the baseline variant is {status} (process {worker}), nothing to compare with; "
                             "run the sweep again")
        if job is not None:
            job.check()
        time.sleep(poll_s)


# ---- CLI --------------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="sweep spec (.yaml/.yml/.json)")
    parser.add_argument("--out", required=True, help="run directory (results.db + images/); rerun to resume")
    parser.add_argument("--executor", default="local", choices=EXECUTORS, help="local (default) or ray")
    parser.add_argument("--address", help="Ray cluster address (default: start a local Ray instance)")
    parser.add_argument("--limit-prompts", type=int, help="use only the first N prompts (quick checks)")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")


def main(args) -> int:
    from tqdm import tqdm

    from backend.paths import check_out_dir

    if args.limit_prompts is not None and args.limit_prompts < 1:
        raise ValueError(f"--limit-prompts {args.limit_prompts} must be ≥ 1")
    sweep = parse_spec(load_spec(args.spec), limit_prompts=args.limit_prompts)
    check_out_dir(args.out, "--out")
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=f"sweep {sweep.name} ({len(sweep.variants)} variants)", unit="img",
                       file=sys.stderr, disable=args.json)
        bar.n = done
        bar.refresh()

    try:
        outcome = run_sweep(sweep, args.out, args.executor, args.address, on_progress=progress)
    finally:
        if bar is not None:
            bar.close()
    info = {"run_id": outcome.run_id, "rundir": str(outcome.rundir), "variants": len(sweep.variants),
            "measured": len(outcome.done), "resumed_skipped": len(outcome.skipped),
            "failed": {sweep.variants[i].name: m for i, m in outcome.failed.items()},
            "unfinished": {sweep.variants[i].name: m for i, m in outcome.unfinished.items()}}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"run {outcome.run_id} in {outcome.rundir}: {len(outcome.done)} measured, "
              f"{len(outcome.skipped)} already done, {len(outcome.failed)} failed")
        for name, message in info["failed"].items():
            print(f"  failed: {name}: {message}", file=sys.stderr)
    if outcome.unfinished:
        print(f"warning: run not complete, {len(outcome.unfinished)} of {len(sweep.variants)} variants not measured "
              f"here: {', '.join(f'{n} ({m})' for n, m in info['unfinished'].items())}; run the same command again "
              "once that process ends (a killed one's variants are taken back)", file=sys.stderr)
    return 1 if outcome.failed else 0
