"""Is the search worth it? tune's search vs an exhaustive grid vs random search, on one space, same image budget.

The grid measures every stack of the space on the search's full rung (--n prompts, --repeats timing rounds): the
ground truth, kept as its own fragment (model ``MODEL-grid``). The search (screening on --screen-n prompts with one
timing round, then promotion to the full rung) runs for each --seeds; its answer is the fastest promoted stack
inside the tolerance. Random search draws stacks at the full rung until it has spent the search's image budget
(--random-trials draws). A strategy *reaches* the grid's best when its answer meets the tolerance in the grid and
its grid speed-up is within 5% of the grid's best. Evaluations at the full rung are read back from the bench's store
(same Variant, prompts, seeds and runner settings), so the search and random search pay in images what a fresh run
would draw, without redrawing them.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

from backend.metrics.paired import bootstrap_interval
from backend.tune.search import Evaluator, Plan, Tuner, prepare
from backend.tune.space import stack_name

DEFAULT_SPACE = {"methods": ["deepcache"], "values": {"deepcache.interval": [2, 3, 5], "deepcache.branch": [0, 1],
                                                      "steps": [25, 50]}}
WITHIN = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="shapes", help="model (default shapes)")
    parser.add_argument("--set", default="hard", help="prompt set (default hard)")
    parser.add_argument("--space", help=f"space (YAML/JSON; default {json.dumps(DEFAULT_SPACE)})")
    parser.add_argument("--tolerance", type=float, default=2.0, help="accuracy tolerance in points (default 2)")
    parser.add_argument("--n", type=int, default=8, help="prompts of the full rung (grid, promotion; default 8)")
    parser.add_argument("--screen-n", type=int, default=2, help="prompts of a screening evaluation (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="timing rounds of the full rung (default 2)")
    parser.add_argument("--max-screen", type=int, default=6, help="stacks the search screens (default 6)")
    parser.add_argument("--promote-k", type=int, default=2, help="stacks the search promotes (default 2)")
    parser.add_argument("--seeds", type=int, default=2, help="search runs (sampler seeds 0..S-1; default 2)")
    parser.add_argument("--random-trials", type=int, default=200, help="random-search draws (default 200)")
    parser.add_argument("--out", default="runs/bench-tune", help="store of the bench (rerun to resume)")


def run(args: argparse.Namespace) -> list[dict]:
    from backend.tune.space import load_space

    spec = load_space(args.space) if args.space else DEFAULT_SPACE
    plan = Plan(screen_n=args.screen_n, promote_n=args.n, promote_repeats=args.repeats, promote_k=args.promote_k,
                confirm_n=args.n, max_screen=args.max_screen, batch=3)  # predictions at the grid's n
    space, objective, plan, pool, baseline = prepare(args.model, args.set, args.tolerance, spec, None, plan)
    rundir = Path(args.out)
    rundir.mkdir(parents=True, exist_ok=True)
    evaluator = Evaluator(rundir, baseline, objective)
    stacks = space.enumerate()
    pairs = [(s, space.variant(s)) for s in stacks]
    probe = Tuner(space, objective, plan, evaluator, pool)
    grid = evaluator.evaluate(pairs, probe.promote)
    truth = {stack_name(e.stack): e for e in grid}
    feasible = [e for e in grid if objective.meets(e)]
    best = max(feasible, key=lambda e: e.speedup) if feasible else None
    full_cost = probe.promote.images()
    sizes = {"space": spec, "stacks": len(stacks), "n": args.n, "screen_n": args.screen_n,
             "timing_rounds": args.repeats, "tolerance_points": args.tolerance}

    def reached(e) -> bool:
        t = truth.get(stack_name(e.stack)) if e is not None else None
        return bool(best and t and objective.meets(t) and t.speedup >= (1 - WITHIN) * best.speedup)

    rows = [{"model": f"{args.model}-grid", "stack": stack_name(e.stack), "speedup": e.speedup,
             "speedup_ci": e.speedup_ci, "accuracy_delta_points": e.quality, "accuracy_delta_ci": e.quality_ci,
             "meets_tolerance": objective.meets(e), "n": e.n} for e in grid]
    rows.append({"model": args.model, "strategy": "grid (ground truth)", "stacks_evaluated": len(grid),
                 "images": len(grid) * full_cost, "answer": stack_name(best.stack) if best else None,
                 "answer_grid_speedup": best.speedup if best else None,
                 "answer_grid_speedup_ci": best.speedup_ci if best else None, "reached_best": best is not None,
                 "runs": 1, **sizes})
    search_images = []
    for seed in range(args.seeds):
        tuner = Tuner(space, objective, Plan(**{**plan.__dict__, "seed": seed}), evaluator, pool)
        screened, promoted = tuner.search()
        inside = [e for e in promoted if not e.error and objective.meets(e)]
        answer = max(inside, key=lambda e: e.speedup) if inside else None
        images = len(screened) * tuner.screen.images() + len(promoted) * full_cost
        search_images.append(images)
        rows.append({"model": args.model, "strategy": f"search (successive halving, seed {seed})",
                     "stacks_evaluated": f"{len(screened)} screened + {len(promoted)} promoted", "images": images,
                     "answer": stack_name(answer.stack) if answer else None,
                     "answer_grid_speedup": truth[stack_name(answer.stack)].speedup if answer else None,
                     "answer_grid_speedup_ci": truth[stack_name(answer.stack)].speedup_ci if answer else None,
                     "reached_best": reached(answer), "runs": 1, **sizes})
    budget = max(1, round(sum(search_images) / len(search_images) / full_cost))
    hits = []
    for trial in range(args.random_trials):
        drawn = random.Random(trial).sample(grid, min(budget, len(grid)))
        inside = [e for e in drawn if objective.meets(e)]
        hits.append(float(reached(max(inside, key=lambda e: e.speedup) if inside else None)))
    rows.append({"model": args.model, "strategy": "random (same image budget)",
                 "stacks_evaluated": min(budget, len(grid)), "images": min(budget, len(grid)) * full_cost,
                 "answer": None, "answer_grid_speedup": None, "reached_best": float(np.mean(hits)),
                 "reached_best_ci": bootstrap_interval(np.array(hits), np.mean),  # over the random draws
                 "runs": args.random_trials, **sizes})
    return rows
