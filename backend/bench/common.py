"""Shared output of the benchmark commands: markdown tables and printed rows (pages: backend/bench/docs.py)."""

from __future__ import annotations

import json


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


def print_rows(rows: list[dict], as_json: bool) -> None:
    from backend.core import jsonable

    if as_json:
        print(json.dumps(jsonable(rows), indent=1))
    else:
        print(markdown_table(rows))
