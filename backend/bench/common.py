"""Shared output of the benchmark commands: print rows, write docs/bench-NAME.md."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return "" if value is None else str(value)


def markdown_table(rows: list[dict]) -> str:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(row.get(k)) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def write_report(name: str, rows: list[dict], command: str) -> Path:
    """docs/bench-NAME.md: the command, where and when it ran, the table, the raw JSON."""
    from backend.__main__ import jsonable
    from backend.runs.runner import environment

    DOCS.mkdir(exist_ok=True)
    path = DOCS / f"bench-{name}.md"
    env = environment()
    text = (
        f"# Benchmark: {name}\n\nProduced by `{command}` on {datetime.date.today()}"
        f" ({env['cpu']}, {env['cpu_threads']} threads, GPU: {env['gpu']}, torch {env['torch']},"
        f" diffusers {env['diffusers']}, commit {env['git_commit']}).\n\n{markdown_table(rows)}\n\n"
        f"<details><summary>JSON rows</summary>\n\n```json\n{json.dumps(jsonable(rows), indent=1)}\n```\n</details>\n"
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def print_rows(rows: list[dict], as_json: bool) -> None:
    from backend.__main__ import jsonable

    if as_json:
        print(json.dumps(jsonable(rows), indent=1))
    else:
        print(markdown_table(rows))
