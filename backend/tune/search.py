"""Find my stack: screen many stacks cheaply, promote the promising ones, confirm the front on fresh seeds.

The search is successive halving over the registry's space (:mod:`backend.tune.space`):

1. **screen** (rung 0): stacks on few prompts and one timing round — first each method alone at its defaults, then
   neighbours of the predicted front (speed-up vs the predicted confirmation), then random stacks;
2. **promote** (rung 1): the fastest stacks predicted to clear the tolerance, then the closest, on more prompts and
   timing rounds;
3. **confirm**: the fastest promoted stacks predicted to clear it, and the safest one, on prompts and seeds the search
   never used; the recommendation is the fastest confirmed stack whose paired quality interval stays inside the
   tolerance.

Few prompts cannot show a small quality loss, so ranking uses a *prediction* of the confirmation
(:mod:`backend.tune.predict`): the lower end of each stack's interval at the largest confirmation, from its verdict
flips and from how far its images are from the same-seed baseline's (PSNR). The confirmation's n is the n its picks
need for their intervals to clear the tolerance (at least MIN_CONFIRM_N, at most the prompt pool or --confirm-n).

With ``--budget-minutes``, screening goes on while the time left covers the promotion and that confirmation (at
most RESERVE_SHARE of the budget); the confirmation then takes the time that is left: as many fresh prompts as
fit (dropping the picks whose need does not fit), and says which n it used.

Every evaluation is a variant of a sweep run in ``RUNDIR/results.db`` (:func:`backend.runs.sweep.run_sweep`: the
same schema, executors and timing protocol as sweeps); an evaluation already in the store (same Variant, prompts,
seeds and runner settings) is read back, never recomputed, so a killed ``tune`` resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backend.tune.plot import FRONT_FILE, RESULT_FILE, front_figure
from backend.tune.predict import Predictor
from backend.tune.space import Space, checkpoints, stack_name

MIN_CONFIRM_N = 16  # the confirmation never uses fewer fresh prompts (unless --confirm-n caps it lower)
RESERVE_SHARE = 0.5  # of --budget-minutes: the most the search keeps back for the confirmation
CONFIRM_SAFETY = 0.9  # share of the time left a confirmation is planned to take (judging and loading take the rest)
CONFIRM_SEED = 1_000_000  # confirmation seeds start here; search seeds start at 0 (disjoint by construction)
METRICS = ("accuracy", "psnr")


@dataclass(frozen=True)
class Rung:
    """Where a stack is measured: prompts, seeds and the sweep runner settings."""

    name: str
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    repeats: int
    measure_macs: bool = False

    def runner(self) -> dict:
        return {"repeats": self.repeats, "batch_size": 16, "measure_macs": self.measure_macs}

    def images(self) -> int:
        """Images one evaluation draws: the prompts, one for memory, warm-up and timing rounds against the baseline."""
        return len(self.prompts) + 1 + 2 * (1 + self.repeats) + (1 if self.measure_macs else 0)

    def units(self, speedups: list[float], baseline: bool = True) -> float:
        """The cost of evaluating stacks of these speed-ups on this rung, in baseline images: each stack's own
        images at its speed, the baseline's half of its timing rounds, and (``baseline``) the baseline's images
        (timed against itself)."""
        timing = 1 + self.repeats
        own = self.images() - timing
        return (self.images() if baseline else 0) + sum(own / max(s, 1e-3) + timing for s in speedups)


@dataclass
class Eval:
    """One stack measured on one rung: speed-up (interval) and paired quality vs the baseline (interval)."""

    stack: dict
    variant: dict
    rung: str
    run_id: str = ""
    idx: int = -1
    speedup: float | None = None
    speedup_ci: list | None = None
    latency_s: float | None = None
    unet_evals: float | None = None
    macs_per_image: float | None = None
    quality: float | None = None  # accuracy: delta in points; psnr: dB
    quality_ci: list | None = None
    verdict: str = ""
    n: int = 0
    error: str = ""
    reused: bool = False
    psnr_db: list | None = None  # per image, vs the same-seed baseline (backend.tune.predict.psnr_db)
    diffs: list | None = None  # accuracy: per prompt, the judge's verdict minus the baseline's (−1, 0, +1)
    predicted: dict = field(default_factory=dict)  # what the confirmation is expected to say (Tuner._predict)

    def row(self) -> dict:
        return {"name": stack_name(self.stack), "rung": self.rung, "variant": self.variant, "speedup": self.speedup,
                "speedup_ci": self.speedup_ci, "latency_s": self.latency_s, "unet_evals": self.unet_evals,
                "macs_per_image": self.macs_per_image, "quality": self.quality, "quality_ci": self.quality_ci,
                "verdict": self.verdict, "n": self.n, "error": self.error or None,
                "flips": None if self.diffs is None else int(np.abs(self.diffs).sum()),
                "psnr_db_median": None if self.psnr_db is None else float(np.median(self.psnr_db)),
                "predicted": self.predicted or None}


@dataclass
class Objective:
    """The quality metric and the tolerance: ``accuracy`` (paired prompt-accuracy delta in points; the 95% interval
    must stay above −T) or ``psnr`` (PSNR vs the same-seed baseline in dB; the interval must stay above T)."""

    metric: str
    tolerance: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"--metric {self.metric!r} is not allowed; allowed: {', '.join(METRICS)}")
        if isinstance(self.tolerance, bool) or not math.isfinite(self.tolerance) or self.tolerance < 0:
            raise ValueError(f"--tolerance {self.tolerance!r} is out of range; allowed: a number ≥ 0 "
                             f"({self.describe_unit()})")

    def describe_unit(self) -> str:
        return ("points of prompt accuracy the 95% interval of the paired delta may go below 0"
                if self.metric == "accuracy" else "the lowest PSNR vs the baseline (dB) the 95% interval may reach")

    @property
    def line(self) -> float:
        """The tolerance on the quality axis."""
        return -self.tolerance if self.metric == "accuracy" else self.tolerance

    def label(self) -> str:
        return "prompt-accuracy delta (points)" if self.metric == "accuracy" else "PSNR vs baseline (dB)"

    def measure(self, images: np.ndarray, baseline: np.ndarray, prompts: list[str]) -> tuple:
        """(value, 95% interval, verdict, per-image PSNR in dB, per-prompt verdict differences or None) of the
        paired metric on float images in [0, 1] (8-bit levels)."""
        from backend.metrics import quality
        from backend.metrics.pixels import psnr_ssim_per_image
        from backend.tune.predict import psnr_db

        per_psnr = [float(x) for x in psnr_db(psnr_ssim_per_image(images, baseline)[0])]
        if self.metric == "accuracy":
            judged, base = quality.judge_per_image(images, prompts), quality.judge_per_image(baseline, prompts)
            paired = quality.paired_quality(images, baseline, prompts, judged=judged, baseline_judged=base)
            d = paired["prompt_accuracy_delta"]
            ci = None if d["ci"] is None else [100 * d["ci"][0], 100 * d["ci"][1]]
            diffs = [int(round(x)) for x in judged["prompt"] - base["prompt"]]
            return 100 * d["delta"], ci, d["verdict"], per_psnr, diffs
        paired = quality.paired_quality(images, baseline, prompts)
        value = _finite(paired["psnr_vs_baseline"])
        ci = paired.get("psnr_vs_baseline_ci")
        ci = None if ci is None else [_finite(ci[0]), _finite(ci[1])]
        return value, ci, f"PSNR {value:.3g} dB vs the baseline (n={len(prompts)})", per_psnr, None

    def meets(self, e: Eval) -> bool:
        """Inside the tolerance: the whole interval (the point when there is none) on the right side of the line."""
        low = e.quality_ci[0] if e.quality_ci else e.quality
        return e.quality is not None and low >= self.line - 1e-9


def _finite(x: float, cap: float = 100.0) -> float:
    """PSNR of identical images is infinite: shown as ``cap`` dB (above any tolerance one would set)."""
    return cap if not math.isfinite(x) else min(float(x), cap)


@dataclass
class Plan:
    """Sizes of the search: prompts and timing rounds per rung, how many are promoted and confirmed."""

    screen_n: int = 4
    screen_repeats: int = 1
    promote_n: int = 16
    promote_repeats: int = 3
    promote_k: int = 6
    confirm_n: int | None = None  # the most fresh prompts of the confirmation (None: the rest of the pool)
    confirm_repeats: int = 5
    confirm_k: int = 3
    batch: int = 8
    max_screen: int | None = None
    seed: int = 0


def prompt_pool(model_has_judge: bool, prompt_set: str) -> list[str]:
    """Every prompt the search and its confirmation may draw from: the Shapes set, or the general captions."""
    if model_has_judge:
        from backend.world.prompts import prompt_set as scenes

        return list(dict.fromkeys(sc.caption for sc in scenes(prompt_set)))
    from backend.captions import general_captions

    return list(dict.fromkeys(general_captions()))


def split_prompts(pool: list[str], n_search: int, n_confirm: int) -> tuple[list[str], list[str]]:
    """Search prompts evenly spread over the pool; confirmation prompts evenly spread over the rest (disjoint)."""
    if n_search + n_confirm > len(pool):
        raise ValueError(f"--n-confirm {n_confirm} with {n_search} search prompts needs {n_search + n_confirm} "
                         f"prompts; the prompt pool has {len(pool)}")
    search_idx = [i * len(pool) // n_search for i in range(n_search)]
    rest = [p for i, p in enumerate(pool) if i not in set(search_idx)]
    return [pool[i] for i in search_idx], [rest[i * len(rest) // n_confirm] for i in range(n_confirm)]


class Evaluator:
    """Measures stacks on a rung into the run folder's store, reading back what is there already."""

    def __init__(self, rundir: Path, baseline: dict, objective: Objective, executor: str = "local",
                 address: str | None = None, job=None):
        self.rundir, self.baseline, self.objective = Path(rundir), baseline, objective
        self.executor, self.address, self.job = executor, address, job
        self.images_drawn = 0  # images generated by this process (not read back)
        # per variant measured here: (baseline images, prompts, is the baseline, seconds it took)
        self.costs: list[tuple[float, int, bool, float]] = []
        self.base_latency: list[float] = []  # seconds of one baseline image, from each fresh stack's timing rounds

    def _index(self, rung: Rung) -> dict[str, tuple[str, int]]:
        """Variant JSON (without its name) -> (run, idx) of a finished evaluation on this rung's prompts, seeds and
        runner settings, over every run of the store."""
        from backend.runs.store import Store

        if not (self.rundir / "results.db").exists():
            return {}
        found: dict[str, tuple[str, int]] = {}
        with Store(self.rundir) as store:
            for run in store.runs():
                settings = run["settings"]
                if (run["prompts"] != list(rung.prompts) or run["seeds"] != list(rung.seeds)
                        or any(settings.get(k) != v for k, v in rung.runner().items())):
                    continue
                for v in store.variants(run["id"]):
                    if v["status"] == "done":
                        found.setdefault(_key(v["config"]), (run["id"], v["idx"]))
        return found

    def evaluate(self, stacks: list[tuple[dict, dict]], rung: Rung, deadline: float | None = None) -> list[Eval]:
        """(stack, variant) pairs measured on ``rung`` (one sweep run for those not in the store yet). Past
        ``deadline`` (time.monotonic()) no further stack is started; those left carry the error "out of time"."""
        from backend.core import JobCancelled, JobControl
        from backend.runs.store import Store
        from backend.runs.sweep import Sweep, run_sweep

        index = self._index(rung)
        todo = [(s, v) for s, v in stacks if _key(v) not in index]
        failed: dict[str, str] = {}
        if todo:
            sweep = Sweep(f"tune-{rung.name}", [_variant_obj(self.baseline)] + [_variant_obj(v) for _, v in todo],
                          list(rung.prompts), list(rung.seeds), rung.runner(), {"tune": rung.name})
            base_at = index.get(_key(self.baseline))
            if base_at is not None:  # the baseline of this rung is measured already: copy it into the new run
                self._seed_baseline(sweep, base_at)
            before = self._done_count()
            job = JobControl(cancel=_Stop(self.job, deadline))
            try:
                outcome = run_sweep(sweep, self.rundir, self.executor, self.address, job=job)
                failed = {_key(sweep.variants[i].to_dict()): msg for i, msg in outcome.failed.items()}
            except JobCancelled:
                if self.job is not None and self.job.cancel is not None and self.job.cancel.is_set():
                    raise
                failed = {_key(v): "out of time" for _, v in todo}
            finally:
                self.images_drawn += (self._done_count() - before) * rung.images()
            index = self._index(rung)
        out = []
        with Store(self.rundir) as store:
            for stack, variant in stacks:
                e = Eval(stack, variant, rung.name, n=len(rung.prompts), reused=not any(v is variant for _, v in todo))
                where = index.get(_key(variant))
                if where is None:
                    e.error = failed.get(_key(variant), "not measured")
                    out.append(e)
                    continue
                e.run_id, e.idx = where
                rows = store.variants(e.run_id)
                m = rows[e.idx]["metrics"]
                if not e.reused and e.speedup:  # what it cost: its images (each 1/speed-up of a baseline image)
                    self.costs.append((rung.units([e.speedup], baseline=False), len(rung.prompts), False,
                                       _duration(rows[e.idx])))
                e.speedup, e.speedup_ci, e.latency_s = m.get("speedup"), m.get("speedup_ci"), m.get("latency_s")
                e.unet_evals, e.macs_per_image = m.get("unet_evals"), m.get("macs_per_image")
                images = store.load_images(e.run_id, e.idx)  # float in [0, 1], exactly the stored 8-bit levels
                base = store.load_images(e.run_id, 0)
                e.quality, e.quality_ci, e.verdict, e.psnr_db, e.diffs = self.objective.measure(
                    images, base, list(rung.prompts))
                out.append(e)
        if todo:
            self.base_latency += [e.latency_s * e.speedup for e in out if not e.reused and e.speedup and e.latency_s]
            if base_at is None:  # the baseline was drawn in this run too
                with Store(self.rundir) as store:
                    rows = store.variants(sweep.run_id)
                if rows and rows[0]["status"] == "done":
                    self.costs.append((rung.units([]), len(rung.prompts), True, _duration(rows[0])))
        return out

    def _done_count(self) -> int:
        from backend.runs.store import Store

        if not (self.rundir / "results.db").exists():
            return 0
        with Store(self.rundir) as store:
            return int(store.conn.execute("SELECT COUNT(*) FROM variants WHERE status='done'").fetchone()[0])

    def _seed_baseline(self, sweep, at: tuple[str, int]) -> None:
        from backend.runs.runner import environment
        from backend.runs.store import Store
        from backend.runs.sweep import TIMING, WARMUP

        with Store(self.rundir) as store:
            run_id = store.create_run(sweep.run_id, [v.to_dict() for v in sweep.variants], sweep.prompts,
                                      sweep.seeds, {**sweep.runner, "warmup": WARMUP, "timing": TIMING,
                                                    "executor": self.executor},
                                      environment(), spec=sweep.spec, name=sweep.name)
            if 0 in store.pending(run_id):
                images = store.load_images(*at)
                metrics = store.variants(at[0])[at[1]]["metrics"]
                store.save_variant(run_id, 0, images, sweep.prompts, sweep.seeds, metrics)


@dataclass
class _Stop:
    """The cancel flag a sweep polls between variants: the user's cancel, or the stage's deadline passed."""

    job: object
    deadline: float | None
    grace: int = 2  # polls before the deadline counts: the baseline and one stack are always measured

    def is_set(self) -> bool:
        user = getattr(self.job, "cancel", None)
        self.grace -= 1
        return bool(user is not None and user.is_set()) or (
            self.grace < 0 and self.deadline is not None and time.monotonic() > self.deadline)


def _duration(row: dict) -> float:
    return float(row["finished"] - row["started"]) if row.get("finished") and row.get("started") else 0.0


def _key(variant: dict) -> str:
    return json.dumps({k: v for k, v in variant.items() if k != "name"}, sort_keys=True, default=str)


def _variant_obj(d: dict):
    from backend.variant import Variant

    return Variant.from_dict(d)


def pareto(evals: list[Eval], value: Callable[[Eval], float] = lambda e: e.quality) -> list[Eval]:
    """The front of speed-up vs ``value`` (the measured quality by default): no other stack is at least as fast
    and as good, and better in one."""
    ok = [(e, value(e)) for e in evals if e.speedup is not None and e.quality is not None]
    front = [e for e, q in ok if not any(
        o.speedup >= e.speedup and oq >= q and (o.speedup > e.speedup or oq > q) for o, oq in ok)]
    return sorted(front, key=lambda e: -e.speedup)


@dataclass
class Outcome:
    """What ``tune`` found: the recommendation (or None), the confirmed front and everything tried."""

    recommended: Eval | None
    confirmed: list[Eval]
    screened: list[Eval]
    promoted: list[Eval]
    tried: dict
    objective: Objective
    proposals: list[dict] = field(default_factory=list)
    space: dict = field(default_factory=dict)
    confirm_set: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        r = self.recommended
        closest = sorted(self.confirmed, key=lambda e: -(e.quality_ci[0] if e.quality_ci else e.quality or -1e9))
        return {
            "recommended": None if r is None else {k: v for k, v in r.variant.items()},
            "confirmation": None if r is None else {
                "speedup": r.speedup, "speedup_ci": r.speedup_ci, "latency_s": r.latency_s,
                "unet_evals": r.unet_evals, "macs_per_image": r.macs_per_image,
                "quality_metric": self.objective.label(), "quality": r.quality, "quality_ci": r.quality_ci,
                "verdict": r.verdict, "meets_tolerance": True, **self.confirm_set},
            "message": (f"recommended: {stack_name(r.stack)}" if r is not None else
                        "no stack within the tolerance: the closest confirmed stacks are listed in 'closest'"),
            "closest": [] if r is not None else [e.row() for e in closest[:3]],
            "confirmation_set": self.confirm_set,
            "tolerance": {"metric": self.objective.metric, "tolerance": self.objective.tolerance,
                          "line": self.objective.line, "rule": self.objective.describe_unit()},
            "front": [{**e.row(), "meets_tolerance": self.objective.meets(e)} for e in self.confirmed],
            "searched": [e.row() for e in self.screened + self.promoted],
            "tried": self.tried, "proposals": self.proposals, "space": self.space,
        }


class Tuner:
    """One search: space, objective, plan, the evaluator, a time budget."""

    def __init__(self, space: Space, objective: Objective, plan: Plan, evaluator: Evaluator, pool: list[str],
                 budget_s: float | None = None, on_event: Callable[[dict], None] | None = None):
        self.space, self.objective, self.plan, self.ev = space, objective, plan, evaluator
        self.budget_s, self.on_event = budget_s, on_event
        self.pool = pool
        search, _ = split_prompts(pool, plan.promote_n, 1)
        self.cap = plan.confirm_n or len(pool) - plan.promote_n  # the most fresh prompts a confirmation may use
        self.screen = Rung("screen", tuple(search[:plan.screen_n]), tuple(range(plan.screen_n)), plan.screen_repeats)
        self.promote = Rung("promote", tuple(search), tuple(range(plan.promote_n)), plan.promote_repeats)
        self.confirm = self.confirm_rung(min(self.cap, MIN_CONFIRM_N))  # sized from the estimates in run()
        self.predictor = Predictor(objective)
        self.judged: list[Eval] = []  # every evaluation measured so far: the predictor learns from all of them
        self.sizing: dict = {}
        self.started = time.monotonic()
        self.invalid: dict[str, str] = {}

    # ---- time -------------------------------------------------------------------------------------------------

    def _left(self) -> float:
        return math.inf if self.budget_s is None else self.budget_s - (time.monotonic() - self.started)

    def confirm_rung(self, n: int) -> Rung:
        """n prompts the search never used (evenly spread over the rest of the pool) and seeds from CONFIRM_SEED."""
        _, confirm = split_prompts(self.pool, self.plan.promote_n, n)
        return Rung("confirm", tuple(confirm), tuple(CONFIRM_SEED + i for i in range(n)), self.plan.confirm_repeats,
                    measure_macs=True)

    def _cost_model(self) -> tuple[float, float, float, float]:
        """Seconds (per baseline image, per prompt of each variant whatever its speed — judging and storing its
        image —, per variant — building, calibrating, warming up —, and per image of the baseline variant on top:
        its batched images run slower than the one-image timing rounds say), fitted by non-negative least squares
        on what each variant measured here took; before four, the timing rounds' baseline latency alone."""
        from scipy.optimize import nnls

        if len(self.ev.costs) >= 4:
            units, prompts, base, secs = np.array(self.ev.costs, dtype=float).T
            coef, _ = nnls(np.stack([units, prompts, np.ones_like(units), base * units], 1), secs)
            if coef[0] > 0:
                return tuple(float(c) for c in coef)
        return (float(np.median(self.ev.base_latency)) if self.ev.base_latency else 0.0), 0.0, 0.0, 0.0

    def _per_unit(self) -> float:
        return self._cost_model()[0]

    def _seconds(self, rung: Rung, evals: list[Eval], baseline: bool = True) -> float:
        per_unit, per_prompt, per_variant, base_extra = self._cost_model()
        images = rung.units([e.speedup or 1.0 for e in evals], baseline)
        return (per_unit * images + (per_prompt * len(rung.prompts) + per_variant) * (len(evals) + baseline)
                + base_extra * (rung.units([]) if baseline else 0))

    def _measure(self, pairs: list[tuple[dict, dict]], rung: Rung, deadline: float | None = None) -> list[Eval]:
        out = self.ev.evaluate(pairs, rung, deadline)
        self.judged += [e for e in out if e.quality is not None]
        self._predict(out)
        return out

    # ---- what the confirmation will say -----------------------------------------------------------------------

    def _predict(self, fresh: list[Eval]) -> None:
        """Refit the predictor on every evaluation so far and note each one's predicted confirmation at ``cap``."""
        self.predictor.fit(self.judged)
        for e in self.judged + fresh:
            low = self.predictor.low(e, self.cap)
            e.predicted = {} if low is None else {"low": round(float(low), 3), "at_n": self.cap,
                                                  "n_needed": _int(self.predictor.needed_n(e))}

    def _score(self, e: Eval) -> float:
        """The predicted lower end of the stack's quality interval at the largest confirmation (higher: safer)."""
        return e.predicted.get("low", -math.inf) if not e.error else -math.inf

    def _likely(self, e: Eval) -> bool:
        """Predicted to clear the tolerance at a confirmation the prompt pool allows."""
        return not e.error and e.quality is not None and self.predictor.clears(e, self.cap)

    def _ranked(self, evals: list[Eval]) -> list[Eval]:
        """Stacks likely to clear the tolerance, fastest first; then the others, closest first; stacks no faster
        than the baseline (which is inside any tolerance) last."""
        ok = [e for e in evals if not e.error and e.quality is not None]
        return sorted(ok, key=lambda e: ((e.speedup or 0) <= 1, *((0, -(e.speedup or 0)) if self._likely(e)
                                                                  else (1, -self._score(e)))))

    def _safest(self, ranked: list[Eval]) -> Eval:
        """The stack faster than the baseline with the best predicted confirmation (any, when none is faster)."""
        return max(ranked, key=lambda e: ((e.speedup or 0) > 1, self._score(e), e.speedup or 0))

    def _plan_confirmation(self, cands: list[Eval], left: float) -> tuple[list[Eval], int]:
        """(picks, n): the fastest stacks likely to clear the tolerance (confirm_k − 1 at most) and the safest one;
        n the most fresh prompts they need (≥ MIN_CONFIRM_N, ≤ cap) or, with ``left`` seconds, as many as fit.
        Picks whose need does not fit are dropped, the largest need first."""
        ranked = self._ranked(cands)
        if not ranked:
            return [], 0
        picks = [e for e in ranked if self._likely(e)][:self.plan.confirm_k - 1]
        safest = self._safest(ranked)
        picks += [safest] if all(safest.stack != p.stack for p in picks) else []
        while True:
            needs = [self.predictor.needed_n(e) for e in picks if self._likely(e)]
            need = min(self.cap, max([MIN_CONFIRM_N, *needs]))
            fit = self._fit_n(picks, left)
            if fit >= need or len(picks) == 1:
                break
            picks.remove(max(picks, key=lambda e: (self.predictor.needed_n(e), -self._score(e))))
        return picks, max(1, min(self.cap, max(MIN_CONFIRM_N, need if math.isinf(fit) else fit)))

    def _fit_n(self, picks: list[Eval], left: float) -> float:
        """The most fresh prompts whose confirmation of ``picks`` fits in ``left`` seconds (inf: no limit, or no
        cost known yet)."""
        per, per_prompt, _, base_extra = self._cost_model()
        if math.isinf(left) or not per:
            return math.inf
        speeds = [e.speedup or 1.0 for e in picks]
        fixed = self._seconds(Rung("confirm", (), (), self.plan.confirm_repeats, measure_macs=True), picks)
        each = per * (1 + sum(1 / max(s, 1e-3) for s in speeds)) + per_prompt * (1 + len(picks)) + base_extra
        return max(0, int((CONFIRM_SAFETY * left - fixed) / each))

    def _reserve(self, cands: list[Eval]) -> float:
        """Seconds the confirmation of the current best candidates needs (at the n they need), at most
        RESERVE_SHARE of the budget: the search always has the rest."""
        picks, n = self._plan_confirmation(cands, math.inf)
        need = self._seconds(self.confirm_rung(n), picks) / CONFIRM_SAFETY if picks else 0.0
        return need if self.budget_s is None else min(need, RESERVE_SHARE * self.budget_s)

    # ---- proposals --------------------------------------------------------------------------------------------

    def _valid(self, stack: dict) -> dict | None:
        from backend.variant import VariantError

        try:
            return self.space.variant(stack)
        except (VariantError, ValueError) as exc:
            self.invalid.setdefault(stack_name(stack), str(exc).splitlines()[0])
            return None

    def _candidates(self, seen: set[str], screened: list[Eval], rng: random.Random) -> list[tuple[dict, dict]]:
        """The next batch to screen: method defaults first, then neighbours of the predicted front (speed-up vs
        the predicted confirmation), then random stacks."""
        batch: list[tuple[dict, dict]] = []

        def add(stack: dict) -> None:
            name = stack_name(stack)
            if name in seen or len(batch) >= self.plan.batch or self.space.is_baseline(stack):
                return
            seen.add(name)
            variant = self._valid(stack)
            if variant is not None and _key(variant) not in seen:  # two stacks, one Variant: measured once
                seen.add(_key(variant))
                batch.append((stack, variant))

        if self.space.size() <= self.plan.batch:  # a small space: all of it
            for stack in self.space.enumerate():
                add(stack)
            return batch
        if not screened:  # each method alone at its defaults (or, where those clash, a valid random stack of it)
            for section, knobs in self.space.methods.items():
                tries = [{**{k: self.space.base_top(k) for k in self.space.top}, **self.space.defaults(section)}]
                tries += [{**{k: rng.choice(v) for k, v in self.space.top.items()},
                           **{f"{section}.{k}": rng.choice(v) for k, v in knobs.items()}} for _ in range(50)]
                for stack in tries:
                    if stack_name(stack) not in seen and self._valid(stack) is not None:
                        add(stack)
                        break
        hopeful = [e for e in screened if self._likely(e) or self.predictor.needed_n(e) < math.inf]
        for e in pareto(hopeful, self._score):
            for n in self.space.neighbours(e.stack):
                add(n)
        for _ in range(200 * self.plan.batch):
            if len(batch) >= self.plan.batch:
                break
            add(self.space.sample(rng))
        return batch

    # ---- the search -------------------------------------------------------------------------------------------

    def _event(self, stage: str, **fields) -> None:
        if self.on_event is not None:
            self.on_event({"stage": stage, "elapsed_s": round(time.monotonic() - self.started, 1), **fields})

    def _promotion_cost(self, screened: list[Eval], k: int) -> float:
        return self._seconds(self.promote, self._ranked(screened)[:k + 1])

    def search(self) -> tuple[list[Eval], list[Eval]]:
        """Screening and promotion: (screened, promoted) evaluations. With a budget, screening goes on while the
        time left covers the next batch, the promotion and the confirmation the best candidates need."""
        rng = random.Random(self.plan.seed)
        seen: set[str] = set()
        screened: list[Eval] = []
        limit = self.plan.max_screen if self.plan.max_screen is not None else self.space.size()
        k = self.plan.promote_k
        while len(screened) < limit:
            after = self._promotion_cost(screened, k) + self._reserve(screened) if screened else 0.0
            if screened and self._left() < self._seconds(self.screen, screened[-self.plan.batch:], False) + after:
                break
            batch = self._candidates(seen, screened, rng)[:max(0, limit - len(screened))]
            if not batch:
                break
            deadline = None if self.budget_s is None else self.started + self.budget_s - after
            screened += self._measure(batch, self.screen, deadline)
            self._event("screen", points=[e.row() for e in screened])

        ranked = self._ranked(screened)
        while k > 1 and self._left() < self._promotion_cost(screened, k) + self._reserve(screened):
            k -= 1
        chosen = ranked[:k]
        safest = self._safest(ranked) if ranked else None
        chosen += [safest] if safest is not None and all(safest.stack != c.stack for c in chosen) else []
        deadline = None if self.budget_s is None else self.started + self.budget_s - self._reserve(screened)
        promoted = self._measure([(e.stack, e.variant) for e in chosen], self.promote, deadline) if chosen else []
        self._event("promote", points=[e.row() for e in screened + promoted])
        return screened, promoted

    def run(self) -> Outcome:
        """The search, then the confirmation of its best candidates on fresh prompts and seeds, sized to need and
        grown to the time left."""
        screened, promoted = self.search()
        usable = [e for e in promoted if not e.error]
        picks, n = self._plan_confirmation(usable, self._left())
        self.confirm = self.confirm_rung(n or min(self.cap, MIN_CONFIRM_N))
        self.sizing = {"n": n, "cap": self.cap, "picks": [
            {"name": stack_name(e.stack), "promoted_quality": e.quality, "promoted_ci": e.quality_ci,
             "flips": e.row()["flips"], "predicted_low_at_n": None if not n else self.predictor.low(e, n),
             "n_needed": _int(self.predictor.needed_n(e))} for e in picks]}
        confirmed = [e for e in self._measure([(e.stack, e.variant) for e in picks], self.confirm) if not e.error] \
            if picks else []
        within = [e for e in confirmed if self.objective.meets(e)]
        recommended = max(within, key=lambda e: e.speedup or 0) if within else None
        self._event("confirm", points=[e.row() for e in screened + promoted + confirmed])
        tried = {
            "space_size": self.space.size(), "screened": len(screened), "promoted": len(promoted),
            "confirmed": len(confirmed), "invalid_skipped": len(self.invalid),
            "failed": {stack_name(e.stack): e.error for e in screened + promoted if e.error},
            "pruned_at_screen": len(screened) - len(promoted),
            "reused_from_store": sum(e.reused for e in screened + promoted + confirmed),
            "images_drawn": self.ev.images_drawn, "minutes": round((time.monotonic() - self.started) / 60, 2),
            "budget_minutes": None if self.budget_s is None else round(self.budget_s / 60, 2),
            "rungs": {r.name: {"n": len(r.prompts), "seeds": [r.seeds[0], r.seeds[-1]], "timing_rounds": r.repeats}
                      for r in (self.screen, self.promote, self.confirm)},
            "confirmation_sizing": self.sizing,
            "flip_model": self.predictor.describe(),
        }
        confirm_set = {"n": len(self.confirm.prompts), "seeds": [self.confirm.seeds[0], self.confirm.seeds[-1]],
                       "prompts_disjoint_from_search": not set(self.confirm.prompts) & set(self.promote.prompts),
                       "seeds_disjoint_from_search": not set(self.confirm.seeds) & set(self.promote.seeds)}
        return Outcome(recommended, sorted(confirmed, key=lambda e: -(e.speedup or 0)), screened, promoted, tried,
                       self.objective, space=self.space.describe(), confirm_set=confirm_set)


def _int(x: float) -> int | None:
    """A needed n for JSON: None when no n will do."""
    return None if math.isinf(x) else int(x)


def train_proposals(space: Space) -> list[dict]:
    """Methods whose checkpoint knob found no checkpoint: "train X" with its declared time budget as the cost."""
    from backend.methods import registry

    out = []
    for section, knobs in space.methods.items():
        method = registry.method(section)
        if "checkpoint" in {p["name"] for p in method.config_class().describe()} and not any(
                knobs.get("checkpoint", checkpoints(section, model=space.model))) and method.finetunes:
            ft = method.finetunes[0]
            minutes = next((p["default"] for p in registry.resolve(ft.config).describe() if p["name"] == "minutes"),
                           None)
            out.append({"method": section, "step": f"python -m backend finetune {ft.kind} --variant "
                        f"'{{\"model\": \"{space.model}\"}}' --out CHECKPOINT_DIR",
                        "estimated_minutes": minutes,
                        "why": f"no {section} checkpoint exists for this search; it was searched without one"})
    return out


def write_outputs(outcome: Outcome, rundir: Path) -> dict:
    """tune.json and the front plot (front.html) in the run folder, each written whole (temporary name, rename)."""
    from backend.core import jsonable

    result = jsonable(outcome.to_dict())
    result["rundir"] = str(rundir)
    tmp = rundir / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(rundir / RESULT_FILE)
    fig = front_figure(result)
    tmp = rundir / (FRONT_FILE + ".tmp")
    fig.write_html(str(tmp), include_plotlyjs=True, full_html=True)
    tmp.replace(rundir / FRONT_FILE)
    result["plot"] = str(rundir / FRONT_FILE)
    return result


def default_metric(model: str, judge: bool) -> str:
    from backend.models import RANDOM_ARCHS

    return "accuracy" if judge and model not in RANDOM_ARCHS else "psnr"


def prepare(model: str, prompt_set: str, tolerance: float, space_spec: dict | None = None,
            metric: str | None = None, plan: Plan | None = None, base: dict | None = None) -> tuple:
    """Everything checked before any file is written: (space, objective, plan, prompt pool, baseline Variant).
    ValueError (one line) for a bad input."""
    from backend.models import RANDOM_ARCHS, check_source, has_shapes_judge, model_defaults, model_family
    from backend.sampling import load_model
    from backend.tune.space import build_space
    from backend.variant import Variant
    from backend.world.prompts import PROMPT_SETS

    if prompt_set not in PROMPT_SETS:
        raise ValueError(f"--set {prompt_set!r} is not allowed; allowed: {', '.join(PROMPT_SETS)}")
    check_source(model)
    pipe = load_model(Variant.from_dict({"model": model, **(base or {})}))
    judge = has_shapes_judge(pipe)
    metric = metric or default_metric(model, judge)
    if metric == "accuracy" and (not judge or model in RANDOM_ARCHS):
        why = "has random weights" if model in RANDOM_ARCHS else "is not a Shapes-world model (no judge reads it)"
        raise ValueError(f"--metric accuracy: model {model!r} {why}; allowed for it: --metric psnr")
    objective = Objective(metric, float(tolerance))
    plan = plan or Plan()
    for name in ("screen_n", "promote_n", "confirm_n", "promote_k", "confirm_k", "batch"):
        if getattr(plan, name) is not None and getattr(plan, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(plan, name)} is out of range; allowed: ≥ 1")
    if plan.screen_n > plan.promote_n:
        raise ValueError(f"--screen-n {plan.screen_n} is above --promote-n {plan.promote_n}; allowed: ≤ it")
    space = build_space(model, space_spec, int(model_defaults(pipe).get("steps") or 50), base, model_family(pipe))
    pool = prompt_pool(judge, prompt_set)
    split_prompts(pool, plan.promote_n, plan.confirm_n or 1)
    return space, objective, plan, pool, space.baseline()


def minimum_budget_s(baseline: dict, plan: Plan) -> float:
    """Seconds one screening evaluation (the baseline and one stack) takes here, at the baseline's speed (measured
    on one image after a warm-up; writes nothing). The confirmation then fits the time left (MIN_CONFIRM_N prompts
    at least)."""
    from backend.runs.build import build_pipeline
    from backend.sampling import generate
    from backend.variant import Variant

    v = Variant.from_dict(baseline)
    pipe = build_pipeline(v)
    generate(pipe, v, ["a small red circle in the center"], [0])
    t0 = time.monotonic()
    generate(pipe, v, ["a small red circle in the center"], [0])
    per_image = time.monotonic() - t0
    screen = Rung("screen", ("",) * plan.screen_n, (0,) * plan.screen_n, plan.screen_repeats)
    return per_image * 2 * screen.images()


def run_tune(model: str, prompt_set: str, tolerance: float, rundir: str | Path, space_spec: dict | None = None,
             metric: str | None = None, budget_minutes: float | None = None, plan: Plan | None = None,
             executor: str = "local", address: str | None = None, job=None,
             on_event: Callable[[dict], None] | None = None, base: dict | None = None) -> dict:
    """The whole search into ``rundir`` (resumable); returns the result written to ``rundir/tune.json``."""
    from backend.paths import check_out_dir
    from backend.runs.sweep import make_executor

    space, objective, plan, pool, baseline = prepare(model, prompt_set, tolerance, space_spec, metric, plan, base)
    if executor not in ("local", "ray"):
        make_executor(executor, address)  # the one-line refusal
    if budget_minutes is not None:
        if isinstance(budget_minutes, bool) or not budget_minutes > 0:
            raise ValueError(f"--budget-minutes {budget_minutes!r} is out of range; allowed: a number > 0")
        need = minimum_budget_s(baseline, plan)
        if budget_minutes * 60 < need:
            raise ValueError(f"--budget-minutes {budget_minutes:g} is too small for one evaluation here; "
                             f"allowed: ≥ {math.ceil(need / 6) / 10:g}")
    rundir = check_out_dir(rundir, "--out")
    evaluator = Evaluator(rundir, baseline, objective, executor, address, job)
    tuner = Tuner(space, objective, plan, evaluator, pool, None if budget_minutes is None else budget_minutes * 60,
                  on_event)
    outcome = tuner.run()
    outcome.proposals = train_proposals(space)
    return write_outputs(outcome, rundir)
