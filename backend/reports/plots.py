"""Analysis and plotly figures of a run: the metrics table, Pareto fronts, per-method curves, bars.

``results_frame(variants)`` turns the store's variants (``Store.variants(run_id)``) into a pandas table with
one row per finished variant: its metrics, speedup and deltas vs the baseline, and the method family and
knob used by the per-method curves (DeepCache N, bit-widths, LCM steps).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from backend.methods import registry

# metric -> (label, higher is better)
QUALITY_METRICS = {
    "prompt_accuracy": ("prompt accuracy", True),
    "kid_shapes": ("KID-Shapes (floor: real vs real)", False),
    "fd_shapes": ("FD-Shapes", False),
    "reward": ("reward", True),
    "psnr_vs_baseline": ("PSNR vs baseline (dB)", True),
    "ssim_vs_baseline": ("SSIM vs baseline", True),
    "clip_score": ("CLIP score", True),
}
COST_METRICS = {
    "latency_s": ("latency (s/image, median)", False),
    "latency_p90_s": ("latency p90 (s/image)", False),
    "speedup": ("speedup vs baseline (×)", True),
    "unet_evals": ("U-Net evaluations / image", False),
    "macs_per_image": ("MACs / image", False),
    "peak_mem_mb": ("peak memory (MB)", False),
    "model_size_mb": ("model size (MB)", False),
}
ATTR_KEYS = ("shape", "color", "size", "position", "count")
TABLE_COLUMNS = ["latency_s", "latency_p90_s", "speedup", "speedup_ci.lo", "speedup_ci.hi", "prompt_accuracy",
                 *[f"attr_accuracy.{k}" for k in ATTR_KEYS], "prompt_accuracy_delta.delta",
                 "prompt_accuracy_delta.ci.lo", "prompt_accuracy_delta.ci.hi", "kid_shapes", "kid_shapes_floor",
                 "reward", "psnr_vs_baseline", "ssim_vs_baseline", "clip_score", "unet_evals", "macs_per_image",
                 "peak_mem_mb", "model_size_mb"]


def _num(value) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if value in ("inf", "-inf", "nan"):
        return float(value)
    return math.nan


def family(config: dict, baseline: dict | None = None) -> tuple[str, str, float]:
    """(family, line label, knob value) for the per-method curves; family "stack" for combinations."""
    on = [m for m in registry.methods() if config.get(m.section)]
    if not on:
        if baseline is not None and config.get("steps") != baseline.get("steps"):
            sched = config.get("scheduler") or "default"
            return "steps", f"steps ({sched})", float(config.get("steps", math.nan))
        return "base", "base", math.nan
    if len(on) > 1:
        return "stack", "+".join(m.section for m in on), math.nan
    method = on[0]
    cfg = config[method.section]
    label = registry.resolve(method.curve_label)(cfg) if method.curve_label else method.curve
    declared = {p["name"]: p["default"] for p in method.config_class().describe()}
    knob = cfg.get(method.curve_knob, declared[method.curve_knob]) if method.curve_knob in declared \
        else config.get(method.curve_knob, math.nan)
    return method.curve, label, _num(knob)


def curve_axes() -> dict[str, str]:
    """Each family of per-method curves -> its x-axis title."""
    return {"steps": "steps", **{m.curve: m.curve_axis for m in registry.methods() if m.curve}}


def _flatten(prefix: str, value, out: dict) -> None:
    """Nested metrics as flat columns: dicts by dotted keys, 2-number intervals as .lo / .hi."""
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        out[f"{prefix}.lo"], out[f"{prefix}.hi"] = _num(value[0]), _num(value[1])
    else:
        out[prefix] = _num(value)


def results_frame(variants: list[dict]) -> pd.DataFrame:
    """One row per finished variant: name, config, metrics, speedup and deltas vs the baseline."""
    done = [v for v in variants if v.get("status") == "done"]
    base = next((v for v in done if v.get("is_baseline")), None)
    rows = []
    for v in done:
        flat: dict = {}
        for key, value in v["metrics"].items():
            _flatten(key, value, flat)
        fam, line, knob = family(v["config"], None if base is None else base["config"])
        rows.append({"idx": v["idx"], "variant": v["name"], "is_baseline": bool(v.get("is_baseline")),
                     "family": fam, "line": line, "knob": knob, **flat})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for col in TABLE_COLUMNS:
        if col not in df:
            df[col] = math.nan
    if base is not None:
        b = df[df["is_baseline"]].iloc[0]
        if df["speedup"].isna().all() and not math.isnan(b["latency_s"]):  # stores from before paired timing
            df["speedup"] = b["latency_s"] / df["latency_s"]
        for col in ("prompt_accuracy", "kid_shapes", "reward", "clip_score", "latency_s"):
            df[f"delta_{col}"] = df[col] - b[col]
    return df.reset_index(drop=True)


def available_quality(df: pd.DataFrame) -> list[str]:
    """Quality metrics with a value for at least one non-baseline variant (psnr/ssim) or any variant."""
    out = []
    for m in QUALITY_METRICS:
        if m not in df:
            continue
        values = df.loc[~df["is_baseline"], m] if m.endswith("_vs_baseline") else df[m]
        if np.isfinite(values.astype(float)).any():
            out.append(m)
    return out


def pareto_front(df: pd.DataFrame, metric: str, higher_is_better: bool | None = None) -> pd.DataFrame:
    """Variants not dominated in (lower latency, better metric), sorted by latency."""
    if higher_is_better is None:
        higher_is_better = QUALITY_METRICS.get(metric, ("", True))[1]
    d = df[np.isfinite(df["latency_s"].astype(float)) & np.isfinite(df[metric].astype(float))]
    d = d.sort_values(["latency_s", metric], ascending=[True, not higher_is_better])
    front, best = [], -math.inf
    for i, row in d.iterrows():
        q = row[metric] if higher_is_better else -row[metric]
        if q > best:
            front.append(i)
            best = q
    return d.loc[front]


def interval(df: pd.DataFrame, metric: str, run: pd.DataFrame | None = None
             ) -> tuple[np.ndarray, np.ndarray] | None:
    """Each row's 95% interval of ``metric`` as (lo, hi) arrays (NaN where a row has none), or None when the frame
    has no interval for it: ``{metric}_ci``, or for a metric paired against the baseline (``{metric}_delta.ci``)
    the baseline's value (found in ``run``, the whole frame ``df`` is part of) plus the paired delta's interval."""
    run = df if run is None else run
    for ci in (f"{metric}_ci", f"{metric.removesuffix('_s')}_ci"):  # latency_s's interval is latency_ci
        if f"{ci}.lo" in df:
            return df[f"{ci}.lo"].astype(float).to_numpy(), df[f"{ci}.hi"].astype(float).to_numpy()
    if f"{metric}_delta.ci.lo" in df and run["is_baseline"].any():
        base = float(run.loc[run["is_baseline"], metric].astype(float).iloc[0])
        return (base + df[f"{metric}_delta.ci.lo"].astype(float).to_numpy(),
                base + df[f"{metric}_delta.ci.hi"].astype(float).to_numpy())
    return None


def error_bars(df: pd.DataFrame, metric: str, run: pd.DataFrame | None = None) -> dict | None:
    """Plotly ``error_x`` / ``error_y`` of ``metric``'s 95% intervals (no bar on a row without one), or None;
    ``run``: the whole frame ``df`` is part of (see :func:`interval`)."""
    ci = interval(df, metric, run)
    if ci is None:
        return None
    value = df[metric].astype(float).to_numpy()
    with np.errstate(invalid="ignore"):
        up, down = np.nan_to_num(ci[1] - value, posinf=0.0), np.nan_to_num(value - ci[0], posinf=0.0)
    return {"type": "data", "symmetric": False, "array": np.clip(up, 0, None).tolist(),
            "arrayminus": np.clip(down, 0, None).tolist(), "thickness": 1.2}


def _hover(df: pd.DataFrame) -> list[str]:
    return [f"{r.variant}<br>latency {r.latency_s:.3g} s · speedup {r.speedup:.2f}×" for r in df.itertuples()]


def fig_pareto(df: pd.DataFrame, metric: str) -> go.Figure:
    """Latency vs one quality metric: every variant, the baseline marked, and the Pareto front as a line."""
    label, higher = QUALITY_METRICS.get(metric, (metric, True))
    d = df[np.isfinite(df[metric].astype(float))]
    fig = go.Figure()
    for is_base, name, symbol in ((False, "variants", "circle"), (True, "baseline", "star")):
        part = d[d["is_baseline"] == is_base]
        if part.empty:
            continue
        fig.add_trace(go.Scatter(x=part["latency_s"], y=part[metric], mode="markers+text", name=name,
                                 text=part["variant"], textposition="top center", hovertext=_hover(part),
                                 marker={"symbol": symbol, "size": 14 if is_base else 10},
                                 error_x=error_bars(part, "latency_s"), error_y=error_bars(part, metric, df)))
    front = pareto_front(df, metric, higher)
    if len(front):
        fig.add_trace(go.Scatter(x=front["latency_s"], y=front[metric], mode="lines", name="Pareto front",
                                 line={"dash": "dash"}, line_shape="hv" if higher else "hv"))
    fig.update_layout(title=f"Latency vs {label} ({'higher' if higher else 'lower'} is better; bars: 95% intervals)",
                      xaxis_title="latency (s / image, median)", yaxis_title=label, height=420,
                      margin={"t": 50, "l": 60, "r": 20, "b": 50})
    return fig


def fig_pareto_all(df: pd.DataFrame) -> go.Figure:
    """One panel per available quality metric: latency vs the metric with its Pareto front."""
    metrics = available_quality(df) or ["speedup"]
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[QUALITY_METRICS.get(m, (m,))[0] for m in metrics])
    for k, m in enumerate(metrics):
        r, c = k // cols + 1, k % cols + 1
        sub = fig_pareto(df, m)
        for trace in sub.data:
            trace.showlegend = k == 0
            trace.mode = trace.mode.replace("+text", "")
            fig.add_trace(trace, row=r, col=c)
        fig.update_xaxes(title_text="latency (s)", row=r, col=c)
    fig.update_layout(title="Pareto fronts: latency vs each quality metric", height=340 * rows,
                      margin={"t": 70, "l": 50, "r": 20, "b": 40})
    return fig


def fig_method_curves(df: pd.DataFrame, metric: str = "speedup") -> go.Figure | None:
    """Per-method curves: one line per family (DeepCache N, bit-widths, LCM steps) of ``metric`` vs the knob."""
    axes = curve_axes()
    d = df[df["family"].isin(list(axes)) & np.isfinite(df["knob"].astype(float))]
    d = d[np.isfinite(d[metric].astype(float))]
    if d.empty:
        return None
    families = list(dict.fromkeys(d["family"]))
    fig = make_subplots(rows=1, cols=len(families), subplot_titles=families)
    for k, fam in enumerate(families):
        for line, part in d[d["family"] == fam].groupby("line", sort=False):
            part = part.sort_values("knob")
            fig.add_trace(go.Scatter(x=part["knob"], y=part[metric], mode="lines+markers", name=line,
                                     hovertext=list(part["variant"]), error_y=error_bars(part, metric, df)),
                          row=1, col=k + 1)
        fig.update_xaxes(title_text=axes[fam], row=1, col=k + 1)
    label = {**QUALITY_METRICS, **COST_METRICS}.get(metric, (metric,))[0]
    fig.update_yaxes(title_text=label, row=1, col=1)
    fig.update_layout(title=f"Per-method curves: {label} (bars: 95% intervals)", height=380,
                      margin={"t": 70, "l": 60, "r": 20, "b": 50})
    return fig


def fig_bars(df: pd.DataFrame, metric: str = "speedup") -> go.Figure:
    """A bar per variant of ``metric`` (the baseline first)."""
    label = {**QUALITY_METRICS, **COST_METRICS}.get(metric, (metric,))[0]
    values = df[metric].astype(float).replace([np.inf, -np.inf], np.nan)
    fig = go.Figure(go.Bar(x=df["variant"], y=values, text=[f"{v:.3g}" if np.isfinite(v) else "" for v in values],
                           textposition="outside", error_y=error_bars(df.assign(**{metric: values}), metric),
                           marker_color=["#888" if b else "#3366cc" for b in df["is_baseline"]]))
    bars = " (bars: 95% intervals)" if interval(df, metric) is not None else ""
    fig.update_layout(title=label + bars, yaxis_title=label, height=380, margin={"t": 50, "l": 60, "r": 20, "b": 120})
    return fig


def figures(df: pd.DataFrame) -> list[tuple[str, go.Figure]]:
    """Every figure of a report, titled: Pareto fronts, scatter per metric, per-method curves, bars."""
    out: list[tuple[str, go.Figure]] = [("Pareto fronts", fig_pareto_all(df))]
    quality = available_quality(df)
    if quality:
        out.append((f"Latency vs {QUALITY_METRICS[quality[0]][0]}", fig_pareto(df, quality[0])))
    for metric in ["speedup", *quality[:1]]:
        fig = fig_method_curves(df, metric)
        if fig is not None:
            out.append((f"Per-method curves ({metric})", fig))
    out.append(("Speedup", fig_bars(df, "speedup")))
    out.append(("Latency", fig_bars(df, "latency_s")))
    if quality:
        out.append((QUALITY_METRICS[quality[0]][0], fig_bars(df, quality[0])))
    return out


def fig_quant_grid(rows: list[dict]) -> go.Figure:
    """Heat-maps of ``bench quant --grid`` rows, one panel per layer policy: weight bits × activation bits,
    coloured by PTQ's paired prompt-accuracy drop vs FP in points (by PSNR vs FP where nothing was judged);
    a star marks a drop that is significant and at least 10 points."""
    grid = [r for r in rows if r.get("method") == "ptq"]
    judged = any(r.get("prompt_accuracy_delta") for r in grid)
    policies = list(dict.fromkeys(r["policy"] for r in grid))
    fig = make_subplots(rows=1, cols=max(1, len(policies)), subplot_titles=policies, shared_yaxes=True)
    for k, policy in enumerate(policies):
        part = [r for r in grid if r["policy"] == policy]
        ws = sorted({r["weight_bits"] for r in part})
        acts = sorted({r["act_bits"] for r in part})
        z = [[math.nan] * len(acts) for _ in ws]
        text = [[""] * len(acts) for _ in ws]
        for r in part:
            i, j = ws.index(r["weight_bits"]), acts.index(r["act_bits"])
            # 0.0 - …: no drop reads "0.0", not "-0.0"
            value = 0.0 - 100 * r["prompt_accuracy_delta"]["delta"] if judged else r["psnr_vs_baseline"]
            z[i][j] = _num(value)
            text[i][j] = f"{z[i][j]:.1f}" + ("*" if r.get("ptq_breaks") else "")
        fig.add_trace(go.Heatmap(z=z, x=[f"A{a}" for a in acts], y=[f"W{w}" for w in ws], text=text,
                                 texttemplate="%{text}", colorscale="Reds" if judged else "Blues_r",
                                 coloraxis="coloraxis"), row=1, col=k + 1)
    label = "PTQ accuracy drop vs FP (points; * significant and ≥ 10)" if judged else "PTQ PSNR vs FP (dB)"
    fig.update_layout(title=label, coloraxis={"colorscale": "Reds" if judged else "Blues_r"}, height=380,
                      margin={"t": 70, "l": 60, "r": 20, "b": 50})
    return fig


def fig_sensitivity(rows: list[dict], metric: str = "eps_rel_mse", top: int = 40) -> go.Figure:
    """Horizontal bars of the per-layer sensitivity map (``backend.methods.quant.sensitivity``): the ``top`` layers by
    ``metric`` (output change vs FP when only that layer is quantized), the most sensitive on top, one colour (and
    legend entry) per layer role."""
    rows = sorted(rows, key=lambda r: -_num(r[metric]))[:top]
    colors = {"first_last": "#d62728", "time_embed": "#9467bd", "skip": "#ff7f0e", "downsample": "#8c564b"}
    fig = go.Figure()
    for role in dict.fromkeys(r.get("role") for r in rows):
        part = [r for r in rows if r.get("role") == role]
        fig.add_trace(go.Bar(y=[r["layer"] for r in part], x=[_num(r[metric]) for r in part], orientation="h",
                             name=str(role), marker_color=colors.get(role, "#3366cc"),
                             hovertext=[f"{r['layer']}: {role}, {r.get('params', 0):,} weights" for r in part]))
    fig.update_layout(title=f"Per-layer sensitivity ({metric}, one layer quantized at a time)", xaxis_title=metric,
                      yaxis={"categoryorder": "array", "categoryarray": [r["layer"] for r in reversed(rows)]},
                      height=140 + 18 * len(rows), margin={"t": 50, "l": 320, "r": 20, "b": 50},
                      legend={"title": "layer role"})
    return fig
