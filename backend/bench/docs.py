"""Benchmark pages built from fragments: every bench run writes its raw rows as one JSON fragment per
(bench, model, device) under docs/bench/NAME/, and docs/bench-NAME.md is generated from the fragments only.

Hand-written readings of the numbers live in docs/readings/bench-NAME.md, which no bench writes.
``python -m backend bench docs`` rebuilds every page from the fragments without measuring anything.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

from backend.bench.common import markdown_table

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


def fragments(name: str) -> list[dict]:
    """The fragments of one bench, ordered by model and device."""
    return [json.loads(p.read_text()) for p in sorted((FRAGMENTS / name).glob("*.json"))]


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


def build_page(name: str) -> str:
    """The text of docs/bench-NAME.md from its fragments (deterministic: no clock, no machine)."""
    parts = [f"# Benchmark: {name}\n\nGenerated from `docs/bench/{name}/*.json` by the bench itself "
             f"(`python -m backend bench {name} ...`; rebuild with `python -m backend bench docs`). Do not edit: "
             f"readings of these numbers are in [readings/bench-{name}.md](readings/bench-{name}.md).\n"]
    for f in fragments(name):
        parts.append(f"## {f['model']} on {f['device']}\n\n{provenance(f)}\n\n{markdown_table(f['rows'])}\n\n"
                     f"<details><summary>JSON rows</summary>\n\n```json\n{json.dumps(f['rows'], indent=1)}\n```\n"
                     f"</details>\n")
    return "\n".join(parts)


def write_page(name: str) -> Path:
    """Write docs/bench-NAME.md from the fragments."""
    path = DOCS / f"bench-{name}.md"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(build_page(name))
    tmp.replace(path)
    return path


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
