"""python -m backend tune: the fastest stack whose paired quality stays inside --tolerance, confirmed on fresh seeds.

The space is every registered method's knobs (``python -m backend schema``), plus steps and scheduler, narrowed
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
                        help="fresh prompts and seeds of the confirmation (default 100)")
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


def _ci(ci) -> str:
    return "" if not ci else f" [{ci[0]:.3g}, {ci[1]:.3g}]"


def summary(result: dict) -> str:
    """The result in a few lines of text."""
    lines = [result["message"]]
    c = result.get("confirmation")
    if c:
        lines += [f"  Variant: {json.dumps(result['recommended'])}",
                  f"  speed-up {c['speedup']:.3g}×{_ci(c['speedup_ci'])}; {c['quality_metric']} "
                  f"{c['quality']:+.3g}{_ci(c['quality_ci'])}: {c['verdict']} (confirmation: n={c['n']}, seeds "
                  f"{c['seeds'][0]}-{c['seeds'][1]}, none used by the search)"]
    lines.append("front (confirmed):")
    for r in result["front"]:
        lines.append(f"  {r['name']}: {r['speedup']:.3g}×{_ci(r['speedup_ci'])}, quality {r['quality']:+.3g}"
                     f"{_ci(r['quality_ci'])}{'' if r['meets_tolerance'] else '  (outside the tolerance)'}")
    t = result["tried"]
    lines.append(f"tried: {t['screened']} screened, {t['promoted']} promoted, {t['confirmed']} confirmed of "
                 f"{t['space_size']} stacks; {len(t['failed'])} failed, {t['invalid_skipped']} invalid skipped; "
                 f"{t['images_drawn']} images in {t['minutes']} min")
    for p in result.get("proposals", []):
        lines.append(f"proposal: train {p['method']} (~{p['estimated_minutes']} min): {p['step']}")
    lines.append(f"plot: {result['plot']}; all results: {result['rundir']}/tune.json")
    return "\n".join(lines)
