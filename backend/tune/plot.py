"""The measured front of a ``tune`` run (plotly): speed-up vs paired quality with intervals, the tolerance line,
searched points faded, confirmed points solid."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import plotly.graph_objects as go

RESULT_FILE = "tune.json"  # what a tune run folder holds: the result, and its front plot
FRONT_FILE = "front.html"


def _errors(rows: list[dict], key: str) -> dict | None:
    if not any(r.get(f"{key}_ci") for r in rows):
        return None
    lo = [(r[key] - r[f"{key}_ci"][0]) if r.get(f"{key}_ci") else 0 for r in rows]
    hi = [(r[f"{key}_ci"][1] - r[key]) if r.get(f"{key}_ci") else 0 for r in rows]
    return {"type": "data", "symmetric": False, "array": hi, "arrayminus": lo, "thickness": 1}


def front_figure(result: dict) -> go.Figure:
    """A figure from ``tune``'s result dict (tune.json)."""
    import plotly.graph_objects as go  # here: the CLI runs where the UI stack is not installed

    tol = result["tolerance"]
    fig = go.Figure()
    groups = (("searched (screen)", [r for r in result["searched"] if r["rung"] == "screen"], 0.25, "circle-open"),
              ("searched (promoted)", [r for r in result["searched"] if r["rung"] == "promote"], 0.45, "circle"),
              ("confirmed on fresh seeds", result["front"], 1.0, "diamond"))
    for name, rows, opacity, symbol in groups:
        rows = [r for r in rows if r.get("speedup") is not None and r.get("quality") is not None]
        if not rows:
            continue
        fig.add_trace(go.Scatter(
            x=[r["speedup"] for r in rows], y=[r["quality"] for r in rows], mode="markers", name=name,
            opacity=opacity, marker={"symbol": symbol, "size": 11 if opacity == 1.0 else 8},
            error_x=_errors(rows, "speedup"), error_y=_errors(rows, "quality"),
            text=[f"{r['name']}<br>n={r['n']}<br>{r.get('verdict', '')}" for r in rows],
            hovertemplate="%{text}<br>speed-up %{x:.2f}×<br>quality %{y:.3g}<extra></extra>"))
    rec = result.get("recommended")
    if rec is not None and result.get("confirmation"):
        c = result["confirmation"]
        fig.add_trace(go.Scatter(x=[c["speedup"]], y=[c["quality"]], mode="markers", name="recommended",
                                 marker={"symbol": "star", "size": 18, "color": "gold",
                                         "line": {"width": 1, "color": "black"}}))
    fig.add_hline(y=tol["line"], line_dash="dash", line_color="red",
                  annotation_text=f"tolerance ({tol['metric']} {tol['line']:+g})")
    metric = "prompt-accuracy delta vs baseline (points)" if tol["metric"] == "accuracy" else "PSNR vs baseline (dB)"
    fig.update_layout(title="Find my stack: measured front (95% intervals)", xaxis_title="speed-up vs baseline (×)",
                      yaxis_title=metric, template="plotly_white", legend={"orientation": "h", "y": -0.2})
    return fig


def report_section(rundir) -> str:
    """The "Find my stack" section of ``python -m backend report`` for a tune run folder ("" for any other run)."""
    import html
    import json
    from pathlib import Path

    path = Path(rundir) / RESULT_FILE
    if not path.is_file():
        return ""
    result = json.loads(path.read_text())
    result.setdefault("plot", str(Path(rundir) / "front.html"))
    fig = front_figure(result).to_html(full_html=False, include_plotlyjs=False, div_id="tune-front")
    return (f"<h2>Find my stack</h2><pre>{html.escape(summary(result))}</pre>{fig}"
            f"<h3>What was tried</h3><pre>{html.escape(json.dumps(result['tried'], indent=1))}</pre>")


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
    sizing = t.get("confirmation_sizing") or {}
    if sizing.get("picks"):
        needs = ", ".join("more than the pool" if p["n_needed"] is None else str(p["n_needed"])
                          for p in sizing["picks"])
        lines.append(f"confirmation: n={sizing['n']} of at most {sizing['cap']} fresh prompts; the picks were "
                     f"predicted to need n = {needs} to clear the tolerance")
    for p in result.get("proposals", []):
        lines.append(f"proposal: train {p['method']} (~{p['estimated_minutes']} min): {p['step']}")
    lines.append(f"plot: {result['plot']}; all results: {result['rundir']}/tune.json")
    return "\n".join(lines)
