"""python -m backend tune: the fastest stack whose paired quality stays inside --tolerance, confirmed on fresh seeds.

The space is every registered method's knobs (``python -m backend schema``; a method the registry marks unsearched,
torch.compile with its minutes of compiling, only when ``--space`` names it), plus steps and scheduler, narrowed
by ``--space`` (YAML/JSON: methods, values, fixed; see backend/tune/space.py). Stacks are screened on few prompts,
the promising ones measured on more, and the measured front confirmed on prompts and seeds the search never saw.
Every evaluation is a row of RUNDIR/results.db (like sweeps): rerun the same command to resume. Writes
RUNDIR/tune.json (the recommended Variant, its confirmed speed-up and paired quality, the front, what was tried)
and RUNDIR/front.html (the front with intervals and the tolerance line).
"""

from __future__ import annotations

import argparse
import json
import sys

from backend.tune.plot import summary
from backend.tune.search import METRICS, Plan, run_tune

DEFAULTS = Plan()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from backend.world.prompts import DEFAULT_SET

    parser.add_argument("--model", default="shapes", help="model source (default shapes)")
    parser.add_argument("--set", default=DEFAULT_SET, help=f"Shapes prompt set (default {DEFAULT_SET})")
    parser.add_argument("--tolerance", type=float, required=True,
                        help="accuracy: points the 95%% interval of the paired prompt-accuracy delta may go below 0 "
                             "(e.g. 2); psnr: the lowest PSNR vs the baseline (dB) the interval may reach")
    parser.add_argument("--metric", choices=METRICS, help="quality metric (default: accuracy on Shapes models, "
                        "psnr otherwise)")
    parser.add_argument("--space", help="YAML/JSON file or inline JSON narrowing the space (methods, values, fixed)")
    parser.add_argument("--budget-minutes", type=float, help="wall-clock cap; the confirmation is kept inside it")
    parser.add_argument("--out", help="run folder (default runs/tune-MODEL-SET); rerun to resume")
    parser.add_argument("--executor", default="local", choices=("local", "ray"), help="local (default) or ray")
    parser.add_argument("--address", help="Ray cluster address (default: a local Ray instance)")
    parser.add_argument("--screen-n", type=int, default=DEFAULTS.screen_n, help="prompts per screening evaluation")
    parser.add_argument("--promote-n", type=int, default=DEFAULTS.promote_n, help="prompts per promoted evaluation")
    parser.add_argument("--confirm-n", type=int, default=DEFAULTS.confirm_n,
                        help="the most fresh prompts and seeds of the confirmation (default: the rest of the prompt "
                        "pool; the n used is what the confirmed stacks need, grown to the time left)")
    parser.add_argument("--max-screen", type=int, help="screen at most this many stacks")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backend.tune.space import load_space

    plan = Plan(screen_n=args.screen_n, promote_n=args.promote_n, confirm_n=args.confirm_n,
                max_screen=args.max_screen)
    out = args.out or str(Path("runs") / f"tune-{Path(args.model).name}-{args.set}")

    def progress(event: dict) -> None:
        if not args.json:
            print(f"[{event['elapsed_s']:.0f} s] {event['stage']}: {len(event['points'])} evaluations",
                  file=sys.stderr)

    result = run_tune(args.model, args.set, args.tolerance, out, load_space(args.space), args.metric,
                      args.budget_minutes, plan, args.executor, args.address, on_event=progress)
    if args.json:
        print(json.dumps(result))
        return 0
    print(summary(result))
    return 0
