"""The Curves tab: one parameter swept (and optionally a second, drawn as colour / series) through
backend.reports.curves, plotted latency vs a chosen quality metric with the Pareto front; hover names the variant
and its metrics; selecting a point compares it with the baseline. Below, the quantization maps of the model from
the newest ``bench quant`` fragments (backend.bench.docs.quant_maps)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from app.images import before_after_html
from backend.bench import docs
from backend.reports import curves
from backend.reports.plots import COST_METRICS, QUALITY_METRICS, error_bars
from backend.runs import compare as cmp
from backend.world.prompts import PROMPT_SETS

NONE = "(none)"
THIS = "this prompt + single set"
PROMPT_SOURCES = (THIS, *PROMPT_SETS)
MIN_PROMPTS = 2  # distribution metrics (fd_shapes) need at least two images
VARIANT_PARAMS = [  # top-level Variant knobs a sweep can move
    {"name": "steps", "type": "int", "default": 25, "minimum": 1, "maximum": 200, "help": "denoising steps"},
    {"name": "guidance", "type": "float", "default": 5.0, "minimum": 0.0, "maximum": 20.0, "help": "CFG scale"},
]
HOVER_METRICS = ("latency_s", "speedup", "psnr_vs_baseline", "ssim_vs_baseline", "prompt_accuracy", "reward",
                 "fd_shapes", "unet_evals")


def _num(text: str, kind: str) -> list:
    out = []
    for part in str(text or "").replace(";", ",").split(","):
        part = part.strip()
        if part:
            try:
                value = float(part)
            except ValueError as exc:
                raise ValueError(f"second parameter values: {part!r} is not a number; give a comma list") from exc
            out.append(int(round(value)) if kind == "int" else value)
    return list(dict.fromkeys(out))


def figure(df: pd.DataFrame, keys: list[str], metric: str) -> go.Figure:
    """Latency vs ``metric``: one series per value of the second key (or one series), the baseline as a star,
    the Pareto front dashed; hover shows the variant's name and metrics."""
    label, higher = {**QUALITY_METRICS, **COST_METRICS}.get(metric, (metric, True))
    fig = go.Figure()
    d = df[np.isfinite(df[metric].astype(float))] if metric in df else df.iloc[0:0]
    pts = d[~d["is_baseline"]]
    series = keys[1] if len(keys) > 1 else None
    groups = pts.groupby(pts[series].map(_value_text), sort=False) if series else [(keys[0], pts)]
    for value, part in groups:
        part = part.sort_values("latency_s")  # joined along the x axis, not in parameter order
        fig.add_trace(go.Scatter(x=part["latency_s"], y=part[metric], mode="lines+markers",
                                 name=f"{series}={value}" if series else keys[0],
                                 hovertext=[_hover(r) for _, r in part.iterrows()], hoverinfo="text",
                                 marker={"size": 10}, error_x=error_bars(part, "latency_s"),
                                 error_y=error_bars(part, metric, df)))
    base = d[d["is_baseline"]]
    if len(base):
        fig.add_trace(go.Scatter(x=base["latency_s"], y=base[metric], mode="markers", name="baseline",
                                 hovertext=[_hover(r) for _, r in base.iterrows()], hoverinfo="text",
                                 marker={"symbol": "star", "size": 14}, error_x=error_bars(base, "latency_s"),
                                 error_y=error_bars(base, metric)))
    fr = curves.front(df, metric)
    if len(fr):
        fig.add_trace(go.Scatter(x=fr["latency_s"], y=fr[metric], mode="lines", name="Pareto front",
                                 line={"dash": "dash", "color": "grey"}, line_shape="hv", hoverinfo="skip"))
    fig.update_layout(title=f"Latency vs {label} ({'higher' if higher else 'lower'} is better; bars: 95% intervals)",
                      xaxis_title="latency (s / image, median)", yaxis_title=label, height=440,
                      margin={"t": 50, "l": 60, "r": 20, "b": 50}, legend={"orientation": "h", "y": -0.2})
    return fig


def _interval(r: pd.Series, metric: str) -> str:
    lo, hi = r.get(f"{metric}_ci.lo"), r.get(f"{metric}_ci.hi")
    if not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)) or math.isnan(lo) or math.isnan(hi):
        return ""
    return f"[{lo:.3g}, {hi:.3g}]"


def _value_text(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _hover(r: pd.Series) -> str:
    parts = [f"<b>{r['variant']}</b>"]
    for m in HOVER_METRICS:
        v = r.get(m)
        if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
            parts.append(f"{m}: {'∞ (identical)' if math.isinf(v) else f'{v:.4g}'}")
    return "<br>".join(parts)


class CurvesCallbacks:
    def __init__(self, store: Path, params: dict[str, list[dict]], cancels, limits: cmp.Limits):
        self.store = store
        self.params = params
        self.cancels = cancels
        self.limits = limits

    def sections(self) -> list[str]:
        return ["variant"] + [s for s in self.params if self.numeric(s)]

    def numeric(self, section: str) -> list[dict]:
        if section == "variant":
            return VARIANT_PARAMS
        return [p for p in self.params.get(section, []) if p["type"] in ("int", "float") and p.get("choices") is None]

    def param(self, section: str, name: str | None) -> dict | None:
        return next((p for p in self.numeric(section) if p["name"] == name), None)

    def section_changed(self, section: str):
        names = [p["name"] for p in self.numeric(section)]
        first = names[0] if names else None
        return (gr.update(choices=names, value=first), *self.param_changed(section, first))

    def param_changed(self, section: str, name: str | None):
        p = self.param(section, name)
        if p is None:
            return gr.skip(), gr.skip(), gr.skip(), ""
        lo, hi = p.get("minimum"), p.get("maximum")
        start = p["default"] if lo is None else lo
        stop = start + 7 if p["type"] == "int" else start + 1.0
        if hi is not None:
            stop = min(stop, hi)
        step = 1 if p["type"] == "int" else round((stop - start) / 4, 4) or 0.1
        bounds = {"minimum": lo, "maximum": hi}
        return (gr.update(value=start, **bounds), gr.update(value=stop, **bounds), gr.update(value=step),
                p.get("help") or "")

    def second_changed(self, section: str, first_section: str, first: str | None):
        """The second parameter's choices; by default one that is not the first parameter."""
        names = [] if section == NONE else [p["name"] for p in self.numeric(section)]
        free = [n for n in names if section != first_section or n != first]
        return gr.update(choices=names, value=free[0] if free else None)

    def _prompts(self, prompt: str, source: str, n: int) -> list[str]:
        """n (≥ 2) prompts: the Playground's prompt first, then prompts spread over the single-object set; or n
        prompts of a named set. The sweep runs them as one batch, each with its own seed."""
        from backend.world.prompts import eval_prompts

        n = max(MIN_PROMPTS, n)
        if source == THIS:
            return [prompt, *eval_prompts("single", n)[1:]]
        return eval_prompts(source, n)

    def run(self, prompt: str, seed: float, model: str, variants_json: str, section: str, name: str, start: float,
            stop: float, step: float, section2: str, name2: str | None, values2: str, source: str, n_prompts: float,
            metric: str, request: gr.Request = None, progress=gr.Progress()):
        """Sweep through backend.runs.sweep; outputs: figure, point table, run (state), status, metric choices."""
        cancel = self.cancels.begin(request)
        try:
            p = self.param(section, name)
            if p is None:
                raise ValueError(f"parameter {name!r} is not a numeric parameter of {section!r}")
            grid = {curves.grid_key(section, name): curves.sweep_values(float(start), float(stop), float(step or 1),
                                                                        p["type"])}
            if section2 != NONE and name2:
                p2 = self.param(section2, name2)
                if p2 is None:
                    raise ValueError(f"parameter {name2!r} is not a numeric parameter of {section2!r}")
                key2 = curves.grid_key(section2, name2)
                if key2 in grid:
                    raise ValueError(f"second parameter {key2!r} is the first one; pick another")
                grid[key2] = _num(values2, p2["type"]) or [p2["default"]]
            base = dict(json.loads(variants_json)[0], model=model)
            prompts = self._prompts(prompt, source, int(n_prompts or 1))
            run_id = curves.run_curves(self.store, base, grid, prompts, cmp.check_seed(seed), cancel=cancel,
                                       limits=self.limits, on_progress=lambda d, t: progress((d, t), desc="sweep"))
        except cmp.GenerationCancelled as exc:  # asked for: a status, not an error
            return (gr.skip(), gr.skip(), gr.skip(),
                    f"**Cancelled** ({exc}); finished points are kept: run the sweep again to resume.", gr.skip())
        except Exception as exc:
            raise gr.Error(str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}") from exc
        finally:
            self.cancels.end(request, cancel)
        run = {"run_id": run_id, "keys": list(grid)}
        return self.outputs(run, metric)

    def outputs(self, run: dict | None, metric: str):
        if not run:
            return None, pd.DataFrame(), run, "No sweep yet.", gr.skip()
        df = curves.curve_points(self.store, run["run_id"], run["keys"])
        metrics = [m for m in QUALITY_METRICS if m in df and np.isfinite(df[m].astype(float)).any()]
        metrics = metrics or ["speedup"]  # random-weight models: speed only
        metric = metric if metric in metrics else metrics[0]
        df = df.assign(**{f"{m} (95% CI)": [_interval(r, m) for _, r in df.iterrows()] for m in ("latency", "speedup")})
        cols = ["variant", *run["keys"], "latency_s", "latency (95% CI)", "speedup", "speedup (95% CI)",
                "timing_noisy", *metrics, "unet_evals"]
        table = df[[c for c in dict.fromkeys(cols) if c in df]].round(4)
        n_front = len(curves.front(df, metric))
        identical = int(np.isinf(df.get("psnr_vs_baseline", pd.Series(dtype=float)).astype(float)).sum()) - 1
        note = f"; {identical} point(s) identical to the baseline (PSNR ∞) are not drawn on the PSNR axis" \
            if identical > 0 and metric == "psnr_vs_baseline" else ""
        status = f"{len(df)} points ({n_front} on the Pareto front){note}."
        return (figure(df, run["keys"], metric), table, run, status, gr.update(choices=metrics, value=metric))

    @staticmethod
    def quant_maps(model: str) -> list:
        """Per quantization map: its plot (hidden when no fragment has it) and its caption."""
        try:
            maps = docs.quant_maps(model)
        except Exception as exc:
            raise gr.Error(f"quantization maps of {model!r}: {type(exc).__name__}: {exc}") from exc
        out = []
        for m in maps:
            out += [gr.update(value=m["figure"], visible=m["figure"] is not None), f"**{m['title']}** — {m['caption']}"]
        return out

    def point_selected(self, run: dict | None, evt: gr.SelectData):
        if not run or evt is None:
            return "", ""
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        df = curves.curve_points(self.store, run["run_id"], run["keys"])
        if not 0 <= index < len(df):
            return "", ""
        row = df.iloc[index]
        base, image = curves.point_images(self.store, run["run_id"], int(row["idx"]))
        return before_after_html(base, image, "baseline", row["variant"]), f"baseline ↔ **{row['variant']}**"
