"""Shared parts of the benchmark commands: argument checks, markdown tables and printed rows (pages:
backend/bench/docs.py)."""

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


def comma_choices(text: str, allowed, flag: str) -> list[str]:
    """The comma list ``text`` of a bench flag; ValueError naming the first value not in ``allowed`` (or none)."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise ValueError(f"{flag}: {bad[0] if bad else text!r} is not allowed; allowed: {', '.join(allowed)}")
    return items


def check_positive(args, flags: tuple[str, ...]) -> None:
    """ValueError naming the first of ``flags`` (argparse dests) below 1."""
    for flag in flags:
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} {getattr(args, flag)} is not allowed; allowed: ≥ 1")
