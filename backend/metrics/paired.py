"""Statistics of paired measurements: intervals for timing ratios and bootstrap intervals for quality deltas.

Every quality delta Speedlab reports is paired: the variant and the baseline saw the same prompt and the
same seed, so the per-prompt differences are resampled together (bootstrap over prompts).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_BOOT = 2000


def median_interval(samples: Sequence[float]) -> tuple[float, list[float] | None]:
    """Median of positive samples (times, ratios) and a 95% interval for their typical value.

    The interval is Student's t on the logarithms (times and ratios are multiplicative); None for a single
    sample. It is widened to contain the median, which is the point estimate shown.
    """
    x = np.asarray(samples, dtype=float)
    med = float(np.median(x))
    if len(x) < 2:
        return med, None
    logs = np.log(x)
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, len(x) - 1) * logs.std(ddof=1) / math.sqrt(len(x))
    centre = logs.mean()
    return med, [min(med, float(math.exp(centre - half))), max(med, float(math.exp(centre + half)))]


def ratio_interval(baseline: Sequence[float], samples: Sequence[float]) -> tuple[float, list[float] | None]:
    """Ratio of medians baseline / samples of two *independent* sets of positive times, with a 95% interval:
    Welch's t on the difference of mean logarithms (None when either set has a single sample). For timings
    that could not be interleaved; paired rounds give tighter intervals (:func:`median_interval` of ratios)."""
    b, v = np.log(np.asarray(baseline, dtype=float)), np.log(np.asarray(samples, dtype=float))
    ratio = float(np.median(np.exp(b)) / np.median(np.exp(v)))
    if len(b) < 2 or len(v) < 2:
        return ratio, None
    vb, vv = b.var(ddof=1) / len(b), v.var(ddof=1) / len(v)
    se = math.sqrt(vb + vv)
    if se == 0:
        return ratio, [ratio, ratio]
    df = (vb + vv) ** 2 / (vb ** 2 / (len(b) - 1) + vv ** 2 / (len(v) - 1))
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, df) * se
    centre = b.mean() - v.mean()
    return ratio, [min(ratio, float(math.exp(centre - half))), max(ratio, float(math.exp(centre + half)))]


def bootstrap_interval(values: np.ndarray, statistic: Callable[[np.ndarray], float], n_boot: int = N_BOOT,
                       seed: int = 0) -> list[float]:
    """Percentile bootstrap 95% interval of statistic(values[idx]) over rows resampled with replacement."""
    values = np.asarray(values)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    boots = np.array([statistic(values[i]) for i in idx], dtype=float)
    # "nearest": no interpolation, so infinite statistics (PSNR of identical images) stay well defined
    lo, hi = np.percentile(boots, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2], method="nearest")
    return [float(lo), float(hi)]


def verdict(delta: float, ci: list[float], n: int, unit: str = "", scale: float = 1.0) -> str:
    """Plain words for a paired delta: "no measurable difference at n=…" when its interval contains 0."""
    if ci[0] <= 0 <= ci[1]:
        return f"no measurable difference at n={n}"
    word = "drop" if delta < 0 else "gain"
    return (f"{word} of {abs(delta) * scale:.3g}{unit} (95% interval {ci[0] * scale:+.3g} to "
            f"{ci[1] * scale:+.3g}{unit}, n={n})")


def paired_delta(values: Sequence[float], baseline_values: Sequence[float], n_boot: int = N_BOOT,
                 seed: int = 0, unit: str = "", scale: float = 1.0) -> dict:
    """Mean of per-pair differences (variant − baseline) with its bootstrap 95% interval and a verdict.

    ``scale``/``unit`` only shape the verdict's words (e.g. 100 and " points" for accuracies).
    """
    a, b = np.asarray(values, dtype=float), np.asarray(baseline_values, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired samples need two equal-length non-empty lists, got {a.shape} and {b.shape}")
    diff = a - b
    delta = float(diff.mean())
    if len(diff) < 2:
        return {"delta": delta, "ci": None, "n": 1, "verdict": "one pair: no interval (n=1)"}
    ci = bootstrap_interval(diff, np.mean, n_boot, seed)
    return {"delta": delta, "ci": ci, "n": len(diff), "verdict": verdict(delta, ci, len(diff), unit, scale)}
