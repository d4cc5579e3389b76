"""Export a run: one self-contained HTML report (plotly.js inlined once, images as data URIs, opens offline),
metrics.csv, metrics.json and a zip bundle (report, tables, configs, images)."""

from __future__ import annotations

import base64
import html
import json
import math
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from backend.paths import check_out_file
from backend.reports import plots
from backend.runs.store import Store, StoreError, open_run

MAX_GRID_PROMPTS = 32


@dataclass
class ReportPaths:
    html: Path
    csv: Path
    json: Path
    zip: Path
    unfinished: list[str] = field(default_factory=list)  # "name (status)" of every variant not measured


def _jsonable(value):
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def load_run(store: Store, run_id: str | None = None) -> tuple[dict, list[dict], pd.DataFrame]:
    """(run, variants, metrics frame); StoreError when nothing is finished yet."""
    run = store.run(run_id)
    variants = store.variants(run["id"])
    df = plots.results_frame(variants)
    if df.empty:
        raise StoreError(f"run {run['id']} in {store.root} has no finished variant yet; run the sweep first")
    return run, variants, df


def metrics_table(df: pd.DataFrame) -> pd.DataFrame:
    """The export table: variant, baseline flag, every metric column, deltas vs the baseline."""
    cols = ["variant", "is_baseline", "family", *plots.TABLE_COLUMNS]
    cols += [c for c in df.columns if c.startswith("delta_")]
    cols += [c for c in df.columns if c not in cols and c not in ("idx", "line", "knob") and df[c].dtype != object]
    return df[[c for c in cols if c in df.columns]]


def _fmt(value, col: str) -> str:
    if isinstance(value, (bool,)):
        return "yes" if value else ""
    if isinstance(value, str):
        return html.escape(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        return html.escape(str(value))
    if math.isnan(v):
        return "–"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if col == "speedup":
        return f"{v:.2f}×"
    if col == "macs_per_image":
        return f"{v / 1e9:.3f} G"
    if col.startswith("delta_"):
        return f"{v:+.3g}"
    return f"{v:.4g}"


def _table_html(table: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = []
    for _, row in table.iterrows():
        cls = ' class="baseline"' if row.get("is_baseline") else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_fmt(row[c], c)}</td>" for c in table.columns) + "</tr>")
    return (f'<div class="scroll"><table class="metrics"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _grid_html(store: Store, run: dict, variants: list[dict], max_prompts: int) -> str:
    done = [v for v in variants if v["status"] == "done"]
    n = min(len(run["prompts"]), max_prompts)
    head = "<th>prompt / seed</th>" + "".join(f"<th>{html.escape(v['name'])}</th>" for v in done)
    rows = []
    for i in range(n):
        cells = [f'<td class="prompt">{html.escape(run["prompts"][i])}<br><small>seed {run["seeds"][i]}</small></td>']
        for v in done:
            image = next((im for im in v["images"] if im["prompt_idx"] == i), None)
            path = None if image is None else store.image_path(image["path"])
            if path is None:
                cells.append("<td>–</td>")
                continue
            alt = html.escape(f"{v['name']}: {run['prompts'][i]} (seed {run['seeds'][i]})")
            src = _data_uri(path)
            cells.append(f'<td><img class="gen" alt="{alt}" title="{alt}" src="{src}"></td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    note = "" if n == len(run["prompts"]) else f"<p>Showing the first {n} of {len(run['prompts'])} prompts.</p>"
    return (f'{note}<div class="scroll"><table class="grid"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def timing_text(settings: dict, environment: dict) -> str:
    """How the run measured time and cost, from the settings the run stored."""
    device = environment.get("gpu") or environment.get("cpu") or "unknown device"
    isa = f", CPU ISA {environment['cpu_isa']}" if environment.get("cpu_isa") else ""
    timing = settings.get("timing") or (f"{settings.get('repeats', 3)} timed repeat(s) per variant in its own "
                                        "window (a store from before interleaved timing)")
    return (
        f"latency_s is the median wall-clock time to generate one image (the first prompt and seed) with the whole "
        f"pipeline (text encoder, every denoising step, VAE decode); {settings.get('repeats', 3)} rounds: {timing}. "
        f"Intervals are 95% (Student t on log times); a row whose interval is wider than ±15% is marked noisy. "
        f"On CUDA the device is synchronised around each timed call. Machine: {device}, "
        f"{environment.get('cpu_threads', 'unknown')} threads{isa}. "
        f"peak_mem_mb is the memory growth while drawing one image (CPU: RSS above the level just before; CUDA: "
        f"peak allocation above the level just before); macs_per_image counts multiply-accumulates of one image "
        f"(torch FlopCounterMode); unet_evals counts U-Net rows per image (2 per step with classifier-free "
        f"guidance), split into full and partial (DeepCache) evaluations. Images are generated in batches of "
        f"{settings.get('batch_size', 16)} with the same prompts and seeds for every variant; quality metrics are "
        f"computed on the saved 8-bit images, and deltas vs the baseline are paired per prompt and seed with "
        f"bootstrap 95% intervals. Executor: {settings.get('executor', 'local')}."
    )


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1600px}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:4px 6px;text-align:right}
th{background:#f4f4f4;position:sticky;top:0}tr.baseline{background:#fff8e1}
table.grid td{text-align:center}td.prompt{text-align:left;max-width:220px;font-size:12px}
img.gen{width:96px;height:96px;image-rendering:pixelated;display:block}
.scroll{overflow-x:auto}pre{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:12px}
.meta{color:#555}
"""


def render_html(store: Store, run: dict, variants: list[dict], df: pd.DataFrame,
                max_prompts: int = MAX_GRID_PROMPTS) -> str:
    """The whole report as one HTML string (plotly.js inlined once; images as data URIs)."""
    from plotly.offline import get_plotlyjs

    figs = plots.figures(df)
    fig_html = []
    for k, (title, fig) in enumerate(figs):
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig{k}",
                          config={"displaylogo": False, "responsive": True})
        fig_html.append(f"<h3>{html.escape(title)}</h3>{div}")
    configs = []
    for v in variants:
        status = v["status"] + (f": {v['error']}" if v.get("error") else "")
        configs.append(f"<h3>{html.escape(v['name'])} <small class='meta'>({html.escape(status)})</small></h3>"
                       f"<pre>{html.escape(json.dumps(v['config'], indent=2, sort_keys=True))}</pre>")
    prompts = "".join(f"<tr><td>{i}</td><td>{s}</td><td style='text-align:left'>{html.escape(p)}</td></tr>"
                      for i, (p, s) in enumerate(zip(run["prompts"], run["seeds"], strict=True)))
    env = {**run["environment"], **{f"runner.{k}": v for k, v in run["settings"].items()}}
    env_rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td style='text-align:left'>{html.escape(str(v))}</td></tr>"
                       for k, v in env.items())
    failed = [v for v in variants if v["status"] != "done"]
    failed_html = ""
    if failed:
        failed_html = ("<p><b>Not finished:</b> " + ", ".join(
            html.escape(f"{v['name']} ({v['status']}{': ' + v['error'] if v.get('error') else ''})") for v in failed)
            + "</p>")
    from backend.tune.plot import report_section  # a tune run folder: its recommendation and front first

    created = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(run["created"]))
    title = f"Speedlab report: {run.get('name') or run['id']}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<h1>{html.escape(title)}</h1>
<p class="meta">run {html.escape(run['id'])} · {created} · {len(df)} of {len(variants)} variants finished ·
{len(run['prompts'])} prompts × the same seeds for every variant ·
git {html.escape(str(run['environment'].get('git_commit')))}</p>
{failed_html}
{report_section(store.root)}
<h2>Metrics</h2>
<p>One row per variant; the baseline is highlighted. speedup = baseline latency / variant latency;
delta_* = variant − baseline.
psnr/ssim_vs_baseline compare each image with the baseline's image of the same prompt and seed.</p>
{_table_html(metrics_table(df))}
<h2>Plots</h2>
{''.join(fig_html)}
<h2>Images (same prompt and seed in every column)</h2>
{_grid_html(store, run, variants, max_prompts)}
<h2>How time was measured</h2>
<p>{html.escape(timing_text(run['settings'], run['environment']))}</p>
<h2>Environment</h2>
<table>{env_rows}</table>
<h2>Variants</h2>
{''.join(configs)}
<h2>Prompts and seeds</h2>
<table><thead><tr><th>#</th><th>seed</th><th>prompt</th></tr></thead><tbody>{prompts}</tbody></table>
</body></html>
"""


def metrics_records(run: dict, variants: list[dict], df: pd.DataFrame) -> dict:
    by_idx = {v["idx"]: v for v in variants}
    rows = []
    for rec in metrics_table(df).assign(idx=df["idx"]).to_dict(orient="records"):
        v = by_idx[rec.pop("idx")]
        rows.append({**rec, "config": v["config"], "metrics": v["metrics"]})
    return _jsonable({"run_id": run["id"], "name": run.get("name"), "prompts": run["prompts"], "seeds": run["seeds"],
                      "settings": run["settings"], "environment": run["environment"], "variants": rows,
                      "unfinished": [{"variant": v["name"], "status": v["status"], "error": v.get("error")}
                                     for v in variants if v["status"] != "done"]})


def export_report(rundir: str | Path, out: str | Path, run_id: str | None = None,
                  max_prompts: int = MAX_GRID_PROMPTS) -> ReportPaths:
    """Write OUT (html), metrics.csv and metrics.json beside it, and OUT's stem + .zip (everything plus images)."""
    out = check_out_file(out, "--out", (".html", ".htm"))
    paths = ReportPaths(out, out.parent / "metrics.csv", out.parent / "metrics.json", out.with_suffix(".zip"))
    for path in (paths.csv, paths.json, paths.zip):  # every output, before any work (nothing half-written)
        check_out_file(path, f"--out (its {path.suffix} beside it)")
    if max_prompts < 1:
        raise ValueError(f"--max-prompts {max_prompts} must be ≥ 1")
    store = open_run(rundir, readonly=True)
    try:
        run, variants, df = load_run(store, run_id)
        page = render_html(store, run, variants, df, max_prompts)
        table = metrics_table(df)
        csv_text = table.assign(config=[json.dumps(next(v["config"] for v in variants if v["name"] == name),
                                                   sort_keys=True) for name in table["variant"]]).to_csv(index=False)
        records = json.dumps(metrics_records(run, variants, df), indent=2, sort_keys=False)
        paths.unfinished = [f"{v['name']} ({v['status']})" for v in variants if v["status"] != "done"]
        tmps = {path: path.with_name(path.name + ".tmp") for path in (paths.html, paths.csv, paths.json, paths.zip)}
        out.parent.mkdir(parents=True, exist_ok=True)
        try:  # all four under temporary names, then renamed: a failure leaves none of them
            for path, text in ((paths.html, page), (paths.csv, csv_text), (paths.json, records)):
                tmps[path].write_text(text, encoding="utf-8")
            _write_zip(tmps[paths.zip], store, out, page, csv_text, records, run, variants)
            for path, tmp in tmps.items():
                tmp.replace(path)
        except BaseException:
            for tmp in tmps.values():
                tmp.unlink(missing_ok=True)
            raise
        return paths
    finally:
        store.close()


def _write_zip(tmp: Path, store: Store, out: Path, page: str, csv_text: str, records: str, run: dict,
               variants: list[dict]) -> None:
    """The bundle: report, tables, configs and every image that lies inside the run directory."""
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(out.name, page)
        z.writestr("metrics.csv", csv_text)
        z.writestr("metrics.json", records)
        z.writestr("config.json", json.dumps(_jsonable({"spec": run["spec"], "variants": [
            {"name": v["name"], **v["config"]} for v in variants], "prompts": run["prompts"],
            "seeds": run["seeds"], "settings": run["settings"], "environment": run["environment"]}), indent=2))
        for v in variants:
            for im in v["images"]:
                src = store.image_path(im["path"])
                if src is not None:
                    z.write(src, f"images/{v['idx']:03d}-{_slug(v['name'])}/{src.name}")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-") or "variant"
