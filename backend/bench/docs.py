"""Benchmark pages built from fragments: every bench run writes its raw rows as one JSON fragment per
(bench, model, device) under docs/bench/NAME/, and docs/bench-NAME.md is generated from the fragments only.

Hand-written readings of the numbers live in docs/readings/bench-NAME.md, which no bench writes.
``python -m backend bench docs`` rebuilds every page from the fragments without measuring anything. A page shows
per fragment a short table (backend/bench/summary.py) and links the fragment's full rows; its one plot
(backend/bench/plot.py) is docs/bench-NAME.svg beside it. A fragment without the measurement protocol's fields
(where, when, how it was made, and 95% intervals) is refused with one line naming the file and the field.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

from backend.bench.plot import figure_svg
from backend.bench.summary import interval_keys, short_table

DOCS = Path(__file__).resolve().parents[2] / "docs"
FRAGMENTS = DOCS / "bench"
READINGS = DOCS / "readings"


def device_label(env: dict) -> str:
    """Where rows were measured, as a file-name-safe label: the GPU's name, or "cpu-" + the CPU's ISA."""
    label = env.get("gpu") or f"cpu-{env.get('cpu_isa') or env.get('cpu') or 'unknown'}"
    return _slug(label)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", str(text).lower()).strip("-") or "unknown"


def write_fragments(name: str, rows: list[dict], command: str, default_model: str = "shapes") -> list[Path]:
    """docs/bench/NAME/MODEL--DEVICE.json for each model among the rows: the rows, the command, the date,
    the machine and the commit. A later run of the same bench, model and device replaces its fragment."""
    from backend.core import jsonable
    from backend.runs.runner import environment

    env = environment()
    by_model: dict[str, list[dict]] = {}
    for row in rows:
        by_model.setdefault(str(row.get("model") or default_model), []).append(row)
    paths = []
    for model, model_rows in by_model.items():
        path = FRAGMENTS / name / f"{_slug(Path(model).name)}--{device_label(env)}.json"
        fragment = {"bench": name, "model": model, "device": device_label(env), "command": command,
                    "date": datetime.date.today().isoformat(), "environment": env, "rows": model_rows}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(jsonable(fragment), indent=1) + "\n")
        tmp.replace(path)
        paths.append(path)
    return paths


REQUIRED = ("bench", "model", "device", "command", "date", "environment", "rows")


def check_fragment(path: Path, fragment) -> dict:
    """The fragment if it has the protocol's fields, else ValueError: one line naming the file and the field."""
    where = path.relative_to(DOCS.parent) if path.is_relative_to(DOCS.parent) else path
    missing = next((k for k in REQUIRED if not isinstance(fragment, dict) or k not in fragment), None)
    if missing is None and not (fragment["environment"] or {}).get("cpu_isa") and \
            not (fragment["environment"] or {}).get("gpu"):
        missing = "environment.cpu_isa"
    if missing is None and (not isinstance(fragment["rows"], list) or not fragment["rows"]
                            or not all(isinstance(r, dict) for r in fragment["rows"])):
        missing = "rows (a non-empty list of objects)"
    if missing is None and not interval_keys(fragment["rows"]):
        missing = "KEY_ci (no row has a 95% interval)"
    if missing is not None:
        raise ValueError(f"{where}: missing field {missing}: a fragment from before the measurement protocol; "
                         "re-run its bench or delete it")
    return fragment


def read_fragment(path: Path) -> dict:
    try:
        fragment = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return check_fragment(path, fragment)


def fragments(name: str) -> list[dict]:
    """The fragments of one bench, ordered by model and device; ValueError on one without the protocol's fields."""
    return [read_fragment(p) for p in sorted((FRAGMENTS / name).glob("*.json"))]


def provenance(f: dict) -> str:
    """One line: the command, date, machine (CPU ISA / GPU), versions and commit a fragment came from."""
    env = f.get("environment", {})
    where = ", ".join(str(x) for x in (
        env.get("gpu") or env.get("cpu"), f"{env.get('cpu_threads')} threads" if env.get("cpu_threads") else None,
        f"CPU ISA {env['cpu_isa']}" if env.get("cpu_isa") else None, f"torch {env.get('torch')}",
        f"diffusers {env.get('diffusers')}", f"commit {env.get('git_commit')}") if x)
    text = f"Produced by `{f['command']}` on {f['date']} ({where})."
    if f.get("note"):
        text += f" {f['note']}"
    return text


def build_page(name: str, plot: bool | None = None) -> str:
    """The text of docs/bench-NAME.md from its fragments (deterministic: no clock, no machine). ``plot``: whether
    the page shows docs/bench-NAME.svg (default: whether the fragments make one)."""
    found = sorted((FRAGMENTS / name).glob("*.json"))
    frags = [read_fragment(p) for p in found]
    if plot is None:
        plot = build_plot(name, frags) is not None
    parts = [f"# Benchmark: {name}\n\nGenerated from `docs/bench/{name}/*.json` by the bench itself "
             f"(`python -m backend bench {name} ...`; rebuild with `python -m backend bench docs`). Do not edit: "
             f"readings of these numbers are in [readings/bench-{name}.md](readings/bench-{name}.md). Each "
             "number is shown with its 95% interval, rounded to what the interval supports.\n"]
    if not found:
        parts.append(f"No measurement under the protocol yet: `python -m backend bench {name}` makes one.\n")
    if plot:
        parts.append(f"![{name}: latency vs quality, with 95% intervals](bench-{name}.svg)\n")
    for path, f in zip(found, frags, strict=True):
        link = path.relative_to(DOCS).as_posix()
        parts.append(f"## {f['model']} on {f['device']}\n\n{provenance(f)}\n\n{short_table(f['rows'])}\n\n"
                     f"Every row, every column: [{link}]({link}).\n")
    return "\n".join(parts)


def build_plot(name: str, frags: list[dict] | None = None) -> str | None:
    """The SVG text of docs/bench-NAME.svg (None when no fragment has a quality column to plot)."""
    return figure_svg(name, fragments(name) if frags is None else frags)


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_page(name: str) -> Path:
    """Write docs/bench-NAME.md and its plot docs/bench-NAME.svg from the fragments (both built before either is
    written: a refused fragment leaves the old page as it was)."""
    svg = build_plot(name)
    page = build_page(name, plot=svg is not None)
    path = DOCS / f"bench-{name}.md"
    if svg is not None:
        _replace(DOCS / f"bench-{name}.svg", svg)
    else:
        (DOCS / f"bench-{name}.svg").unlink(missing_ok=True)
    _replace(path, page)
    return path


def write_pages(names: list[str]) -> list[Path]:
    """Rebuild several pages; every fragment is checked before any page is written."""
    for name in names:
        fragments(name)
    return [write_page(name) for name in names]


def latest_fragment(name: str, model: str, part: str) -> dict | None:
    """The newest fragment of bench ``name`` measured on ``model`` as ``part``: its model reads "MODEL (PART...)",
    e.g. "shapes (grid)" or "shapes (sensitivity W4A4)"; the later date wins, then the later file. None if none."""
    label = re.compile(rf"{re.escape(model)} \({re.escape(part)}\b[^)]*\)")
    best = None
    for path in sorted((FRAGMENTS / name).glob("*.json"), key=lambda p: p.stat().st_mtime):
        fragment = json.loads(path.read_text())
        if label.fullmatch(str(fragment.get("model"))) and (best is None or fragment["date"] >= best["date"]):
            best = fragment
    return best


# The quantization maps the workbench's Curves tab shows: the part of `bench quant` a fragment comes from, what
# it shows, its figure in backend.reports.plots and the command that makes one.
QUANT_MAPS = (
    ("grid", "where PTQ breaks (weight × activation bits, per layer policy)", "fig_quant_grid",
     "python -m backend bench quant --grid --set hard --n 100"),
    ("sensitivity", "per-layer sensitivity", "fig_sensitivity",
     "python -m backend bench quant --sensitivity --bits W4A4"),
)


def quant_maps(model: str) -> list[dict]:
    """For each of QUANT_MAPS on ``model``: its title, the plotly figure from the newest fragment (None when there
    is none) and a one-line caption: where the fragment came from, or the command that makes one."""
    from backend.reports import plots

    out = []
    for part, title, figure, command in QUANT_MAPS:
        fragment = latest_fragment("quant", model, part)
        if fragment is None:
            command += "" if model == "shapes" else f" --model {model}"
            out.append({"title": title, "figure": None, "caption": f"No {part} map of {model} yet: `{command}` "
                        "makes one."})
        else:
            out.append({"title": title, "figure": getattr(plots, figure)(fragment["rows"]),
                        "caption": provenance(fragment)})
    return out


def benches_with_fragments() -> list[str]:
    return sorted(p.name for p in FRAGMENTS.iterdir() if p.is_dir()) if FRAGMENTS.is_dir() else []


def bench_pages() -> list[str]:
    """Every bench with fragments or a page (a page whose fragments were all deleted is rebuilt, saying so)."""
    pages = {p.name[len("bench-"):-len(".md")] for p in DOCS.glob("bench-*.md")}
    return sorted(pages | set(benches_with_fragments()))
