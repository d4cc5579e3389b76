"""The one plot of a bench page: latency against quality with both intervals, as a deterministic SVG written beside
the page (docs/bench-NAME.svg; matplotlib, fixed hash salt, no date, text kept as text).

Where no row of the bench has a latency (a quality-only bench), the plot shows the quality column with its
intervals per row instead.
"""

from __future__ import annotations

import io

from backend.bench.summary import MAX_ROWS, interval_of, row_label, title

X_KEYS = ("latency_s", "s_per_iter", "unet_ms")
Y_KEYS = ("accuracy_delta_points", "prompt_accuracy_delta", "psnr_vs_baseline", "psnr_vs_fp32", "kid_shapes",
          "eps_rel_mse", "value")


def _first(keys: tuple[str, ...], rows: list[dict]) -> str | None:
    return next((k for k in keys if any(interval_of(r, k)[0] is not None for r in rows)), None)


def _err(value: float, ci) -> list[float]:
    return [0.0, 0.0] if ci is None else [max(0.0, value - ci[0]), max(0.0, ci[1] - value)]


def figure_svg(name: str, fragments: list[dict]) -> str | None:
    """The SVG text of the page's plot, or None when no fragment has a quality column to show."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    matplotlib.rcParams.update({"svg.hashsalt": "speedlab", "svg.fonttype": "none", "font.size": 9})
    scatter = [(f, _first(X_KEYS, f["rows"]), _first(Y_KEYS, f["rows"])) for f in fragments]
    scatter = [(f, x, y) for f, x, y in scatter if x and y]
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    if scatter:
        for f, xk, yk in scatter:
            points = [(row_label(r, i), interval_of(r, xk), interval_of(r, yk)) for i, r in enumerate(f["rows"])]
            points = [(lab, x, y) for lab, x, y in points if x[0] is not None and y[0] is not None]
            if not points:
                continue
            xs, ys = [x[0] for _, x, _ in points], [y[0] for _, _, y in points]
            ax.errorbar(xs, ys, xerr=list(zip(*[_err(*x) for _, x, _ in points], strict=True)),
                        yerr=list(zip(*[_err(*y) for _, _, y in points], strict=True)), fmt="o", capsize=3,
                        label=f"{f['model']} on {f['device']}")
            for label, x, y in points:
                ax.annotate(label, (x[0], y[0]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        xs = [x for line in ax.lines for x in line.get_xdata()]
        if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(f"{title(scatter[0][1])} (median, 95% interval)")
        ax.set_ylabel(f"{title(scatter[0][2])} (95% interval)")
        ax.set_title(f"{name}: latency vs quality")
        ax.legend(fontsize=7)
    else:
        shown = [(f, _first(Y_KEYS, f["rows"])) for f in fragments]
        shown = [(f, y) for f, y in shown if y]
        if not shown:
            return None
        f, yk = shown[0]
        points = [(row_label(r, i), interval_of(r, yk)) for i, r in enumerate(f["rows"])]
        points = [(lab, v) for lab, v in points if v[0] is not None][:MAX_ROWS]
        ax.errorbar([v[0] for _, v in points], range(len(points)),
                    xerr=list(zip(*[_err(*v) for _, v in points], strict=True)), fmt="o", capsize=3)
        ax.set_yticks(range(len(points)), [lab[:48] for lab, _ in points], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(f"{title(yk)} (95% interval)")
        ax.set_title(f"{name}: {f['model']} on {f['device']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    return out.getvalue()
