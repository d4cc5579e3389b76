"""Export a run as one self-contained HTML report (opens offline) plus metrics.csv, metrics.json and a zip bundle.

    python -m backend report RUNDIR --out report.html [--run RUN_ID]

metrics.csv and metrics.json are written beside the HTML file; the zip bundle (same name, .zip) holds
them, the configs, prompts, seeds, environment and every image.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rundir", help="run directory written by python -m backend sweep")
    parser.add_argument("--out", required=True, help="report file (.html); metrics.csv/.json and a .zip go beside it")
    parser.add_argument("--run", dest="run_id", help="run id inside RUNDIR (default: the newest)")
    parser.add_argument("--max-prompts", type=int, default=32, help="prompts shown in the image grid (default 32)")
    parser.add_argument("--json", action="store_true", help="print the written paths as JSON")


def main(args) -> int:
    from backend.reports.export import export_report

    paths = export_report(args.rundir, args.out, run_id=args.run_id, max_prompts=args.max_prompts)
    info = {k: v if k == "unfinished" else str(v) for k, v in vars(paths).items()}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"wrote {paths.html} (+ {paths.csv.name}, {paths.json.name}, {paths.zip.name})")
    if paths.unfinished:
        print(f"warning: {len(paths.unfinished)} variant(s) not measured, missing from the report: "
              f"{', '.join(paths.unfinished)}; run the sweep again to measure them", file=sys.stderr)
    return 0
