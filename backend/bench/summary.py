"""The short table a bench page shows: per row what was measured, its numbers with their 95% intervals, rounded
to what the interval supports (never more than 4 significant digits), and the verdict of its quality delta.

The full rows stay in the bench's JSON fragment (docs/bench/NAME/*.json), which the page links to.
"""

from __future__ import annotations

import math
import re

from backend.bench.common import markdown_table

MAX_ROWS = 40  # rows shown per fragment; the rest are in its JSON
MAX_DIGITS = 4  # significant digits, at most, of any number on a page
PLAIN_DIGITS = 3  # significant digits of a number shown without an interval

# What a reader needs beside the interval columns, when a row has it (shown without an interval).
PLAIN_KEYS = ("psnr_vs_baseline", "psnr_vs_fp32", "peak_mem_mb", "macs_speedup", "model_size_mb", "weights_vs_fp32")
# The label of a row: the first of these keys it has ("method" joined with "bits").
LABEL_KEYS = ("config", "setting", "check", "layer", "name", "strategy", "stack", "variant")
TITLES = {
    "speedup": "speed-up", "unet_speedup": "U-Net speed-up", "latency_s": "latency (s)", "unet_ms": "U-Net (ms)",
    "accuracy_delta_points": "accuracy Δ (points)", "prompt_accuracy_delta": "accuracy Δ (points)",
    "psnr_vs_baseline": "PSNR vs baseline (dB)", "psnr_vs_fp32": "PSNR vs fp32 (dB)", "peak_mem_mb": "memory (MB)",
    "macs_speedup": "MACs ratio", "model_size_mb": "size (MB)", "weights_vs_fp32": "weights vs fp32",
    "kid_shapes": "KID", "kid_shapes_floor": "KID floor (real vs real)", "s_per_iter": "s / iteration",
    "iter_cost_ratio": "cost ratio", "eps_rel_mse": "relative ε MSE", "ssim_vs_baseline": "SSIM vs baseline",
    "acc_delta": "accuracy Δ (points)", "reward_delta": "reward Δ", "hf_delta": "hf energy Δ",
}


def title(key: str) -> str:
    return TITLES.get(key, key.replace("_", " "))


def row_label(row: dict, index: int, with_steps: bool = False) -> str:
    """The first LABEL_KEYS text of the row (``with_steps``: and its step count, where the text names none)."""
    for key in LABEL_KEYS:
        if row.get(key) not in (None, "") and not isinstance(row[key], dict):
            label = str(row[key])
            if with_steps and isinstance(row.get("steps"), int) and not re.search(r"\b\d+[- ]steps?\b", label):
                label += f" · {row['steps']} step" + ("s" if row["steps"] != 1 else "")
            return label
    if row.get("method"):
        return " ".join(str(row[k]) for k in ("method", "bits") if row.get(k))
    return f"row {index + 1}"


def interval_of(row: dict, key: str) -> tuple[float | None, list[float] | None]:
    """(value, [lo, hi]) of ``key`` in a row: ``key`` with ``key_ci``, or a paired delta {"delta", "ci"}
    (accuracy deltas in points); (None, None) when the row lacks it."""
    value = row.get(key)
    scale = 100.0 if _is_accuracy_delta(key) else 1.0
    if isinstance(value, dict) and "delta" in value:
        ci = value.get("ci")
        return _num(value["delta"], scale), None if ci is None else [_num(c, scale) for c in ci]
    number = _number(value)
    if number is None or key.endswith("_points"):
        return (None, None) if number is None else (number, _ci_of(row, key))
    ci = _ci_of(row, key)
    return number * scale, None if ci is None else [c * scale for c in ci]


def _is_accuracy_delta(key: str) -> bool:
    """A prompt-accuracy delta stored as a fraction (shown in points)."""
    return "delta" in key and (key.startswith("acc_") or "accuracy" in key)


def _number(value) -> float | None:
    """A measured number: int, float, or the JSON spelling of a non-finite one ("inf", "-inf", "nan")."""
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _ci_of(row: dict, key: str) -> list[float] | None:
    """The interval of ``key``: ``KEY_ci``, or its unit suffix replaced by ``_ci`` (latency_s → latency_ci,
    accuracy_delta_points → accuracy_delta_ci)."""
    for name in (f"{key}_ci", key.rsplit("_", 1)[0] + "_ci"):
        if name != key and _is_interval(row.get(name)):
            return row[name]
    return None


def _num(x, scale: float = 1.0) -> float:
    return float(x) * scale


def _is_interval(ci) -> bool:
    return isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci)


def interval_keys(rows: list[dict]) -> list[str]:
    """Keys that carry a 95% interval in some row (``KEY`` + ``KEY_ci``, or a paired delta), in row order."""
    keys: list[str] = []
    for row in rows:
        for key, value in row.items():
            has = (isinstance(value, dict) and "delta" in value and "ci" in value) or (
                _number(value) is not None and _ci_of(row, key) is not None)
            if has and key not in keys:
                keys.append(key)
    return keys


def _decimals(x: float, lo: float | None = None, hi: float | None = None) -> int:
    """Decimals to print: one digit below the leading digit of the interval's width (PLAIN_DIGITS significant
    digits without an interval), and never more than MAX_DIGITS significant digits for the largest number."""
    biggest = max(abs(v) for v in (x, lo, hi) if v is not None and math.isfinite(v))
    magnitude = math.floor(math.log10(biggest)) if biggest > 0 else 0
    if lo is not None and hi is not None and math.isfinite(hi - lo) and hi - lo > 0:
        decimals = 1 - math.floor(math.log10(hi - lo))
    else:
        decimals = PLAIN_DIGITS - 1 - magnitude
    return min(decimals, MAX_DIGITS - 1 - magnitude)


def _fixed(x: float, decimals: int) -> str:
    if not math.isfinite(x):
        return "∞" if x > 0 else ("-∞" if x < 0 else "n/a")
    if decimals <= 0:
        return str(int(round(x, decimals))) if x != 0 else "0"
    return f"{round(x, decimals) + 0.0:.{decimals}f}"


def fmt(x: float, ci: list[float] | None = None, unit: str = "") -> str:
    """``2.27× [2.18, 2.41]``: a value and its interval rounded to what the interval supports."""
    if not math.isfinite(x):
        return _fixed(x, 0)
    if ci is None or not all(math.isfinite(c) for c in ci) or ci[1] - ci[0] <= 0:
        return ("0" if x == 0 else _fixed(x, _decimals(x))) + unit
    d = _decimals(x, *ci)
    return f"{_fixed(x, d)}{unit} [{_fixed(ci[0], d)}, {_fixed(ci[1], d)}]"


def verdict(ci: list[float] | None, n=None) -> str:
    """Plain words for a quality delta's interval."""
    if ci is None:
        return "no interval"
    at = f" (n={n})" if n else ""
    if ci[0] <= 0 <= ci[1]:
        return "no measurable difference" + at
    return ("drop" if ci[1] < 0 else "gain") + at


def short_rows(rows: list[dict]) -> list[dict]:
    """The reader's columns of each row: what, every interval column (quality deltas followed by their verdict),
    then the plain columns of PLAIN_KEYS the rows have."""
    keys = interval_keys(rows)
    deltas = [k for k in keys if "delta" in k]
    judged = next((k for k in deltas if _is_accuracy_delta(k)), deltas[0] if deltas else None)
    plain = [k for k in PLAIN_KEYS if k not in keys and any(isinstance(r.get(k), (int, float)) for r in rows)]
    with_steps = len({r["steps"] for r in rows if isinstance(r.get("steps"), int)}) > 1  # steps tell rows apart
    labels = [row_label(row, i, with_steps) for i, row in enumerate(rows)]
    out = []
    for i, row in enumerate(rows):
        short = {"what": labels[i]}
        if labels.count(labels[i]) > 1 and row.get("method") and str(row["method"]) not in labels[i]:
            short["what"] += f" · {row['method']}"  # e.g. a grid's PTQ and EfficientDM rows of one setting
        for key in keys:
            value, ci = interval_of(row, key)
            unit = "×" if "speedup" in key or "ratio" in key else ""
            short[title(key)] = "" if value is None else fmt(value, ci, unit)
            if key == judged:  # one verdict column: the accuracy delta's (else the first delta's)
                n = row[key].get("n") if isinstance(row.get(key), dict) else None
                short["verdict"] = "" if value is None else verdict(ci, n)
        for key in plain:
            value = row.get(key)
            unit = "×" if "speedup" in key else ""
            short[title(key)] = fmt(float(value), None, unit) if isinstance(value, (int, float)) else ""
        out.append(short)
    return out


def is_statement(row: dict) -> bool:
    """A row that states a verdict in words (a bench's claim or rule row) and measures nothing itself."""
    return isinstance(row.get("verdict"), str) and not interval_keys([row])


def short_table(rows: list[dict]) -> str:
    """The markdown table of :func:`short_rows` (MAX_ROWS measured rows at most, with a line saying how many are
    left out), then the statement rows, one line each."""
    measured = [r for r in rows if not is_statement(r)]
    short = short_rows(measured[:MAX_ROWS])
    # a row with no column to show (e.g. a grid's summary of its other rows) stays in the JSON only
    table = markdown_table([r for r in short if any(v != "" for k, v in r.items() if k != "what")] or short)
    if len(measured) > MAX_ROWS:
        table += f"\n\n{MAX_ROWS} of {len(measured)} measured rows shown; every row is in the JSON."
    statements = [f"- **{row_label(r, i, with_steps=True)}** — {r['verdict']}"
                  for i, r in enumerate(rows) if is_statement(r)]
    return table + ("\n\n" + "\n".join(statements) if statements else "")
