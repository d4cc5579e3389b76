"""``bench quant --sensitivity``: the per-layer sensitivity map at the lowest --bits, every Conv2d / Linear
quantized alone (:mod:`backend.methods.quant.sensitivity`), most sensitive first, with a bar chart written as
HTML next to the bench page (``backend.reports.plots.fig_sensitivity``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run(args: argparse.Namespace) -> list[dict]:
    from backend.bench.docs import DOCS, _slug, device_label
    from backend.bench.quant_bits import parse_bits
    from backend.methods.quant.sensitivity import sensitivity_map, target_config
    from backend.models import load_pipeline
    from backend.reports.plots import fig_sensitivity
    from backend.runs.runner import environment

    model = args.model or "shapes"
    label, w, a = parse_bits(args.bits)[-1]
    pipe = load_pipeline(model)
    rows = sensitivity_map(pipe, target_config(w, a, seed=args.seed), samples=args.samples, seed=args.seed)
    rows = [{"model": f"{model} (sensitivity {label})", **r, "rank": i + 1}
            for i, r in enumerate(sorted(rows, key=lambda r: -r["eps_rel_mse"]))]
    path = Path(args.html) if args.html else (
        DOCS / f"bench-quant-sensitivity--{_slug(Path(model).name)}--{device_label(environment())}.html")
    tmp = path.with_name(path.name + ".tmp")
    fig_sensitivity(rows).write_html(tmp, include_plotlyjs="cdn")
    tmp.replace(path)
    print(f"bar chart written to {path}", file=sys.stderr)
    return rows
