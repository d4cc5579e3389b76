"""Which U-Net evaluations of a call run in full: uniform, the paper's non-uniform schedule, or a given list.

Steps are counted per U-Net evaluation of the current pipeline call (per CFG branch), starting at 0,
so img2img (a call that starts late in the scheduler's timesteps), Heun-type solvers (two evaluations
per step) and PLMS (one extra evaluation) all count what the U-Net really does.
"""

from __future__ import annotations

import math

import numpy as np


def uniform_full_steps(total: int, interval: int) -> list[int]:
    """Evaluation i is full iff i mod interval == 0: [0, N, 2N, ...] below ``total``."""
    _check_interval(interval)
    return list(range(0, max(int(total), 0), interval))


def nonuniform_full_steps(total: int, interval: int, center: float = 15, power: float = 1.4) -> list[int]:
    """The paper's quadratic schedule (eq. 7): k = ceil(total / interval) full steps, dense near ``center``.

    Points are spaced evenly in x = (i - center) ** (1 / p) between (-center) ** (1 / p) and
    (total - center) ** (1 / p) and mapped back with x ** p. As in the paper's code, a negative base
    raised to 1/p is a complex number: the interpolation runs in complex arithmetic and the integer
    cast keeps the real part (truncation toward zero). When the distinct points do not give k steps
    below ``total``, p is lowered by 0.02 and tried again; ValueError once p reaches 1.

    T=50, N=5, center 15, power 1.4 gives [0, 5, 9, 13, 17, 21, 26, 31, 37, 43].
    """
    _check_interval(interval)
    total = int(total)
    if total < 1:
        raise ValueError(f"deepcache: a schedule needs at least 1 U-Net evaluation, got {total}")
    k = math.ceil(total / interval)
    if k == 1:
        return [0]
    p = float(power)
    if not p > 1:
        raise ValueError(f"deepcache.power: {power} must be greater than 1")
    while p > 1:
        lo = complex(-center) ** (1 / p)
        hi = complex(total - center) ** (1 / p)
        points = np.linspace(lo, hi, k + 1) ** p
        # numpy's int32 cast of a complex array keeps the real part and truncates toward zero
        ints = np.unique(np.trunc(points.real).astype(np.int64))
        steps = [0] + [int(v + center) for v in ints[1:-1]]
        if len(steps) == k and steps[-1] < total:
            return steps
        p -= 0.02
    raise ValueError(
        f"deepcache: the nonuniform schedule cannot place {k} full steps (interval {interval}) among {total} U-Net "
        f"evaluations with center {center} and power {power}; use a larger interval, a center inside "
        f"0..{total - 1}, or schedule 'uniform'"
    )


def explicit_full_steps(full_steps: list[int]) -> list[int]:
    """A given list of full evaluations, validated: whole numbers ≥ 0, strictly increasing, starting at 0."""
    if not isinstance(full_steps, (list, tuple)) or not full_steps:
        raise ValueError(f"deepcache.full_steps: {full_steps!r} must be a non-empty list of evaluation indices")
    for v in full_steps:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"deepcache.full_steps: {v!r} is not allowed; allowed: whole numbers ≥ 0")
    if list(full_steps) != sorted(set(full_steps)):
        raise ValueError(f"deepcache.full_steps: {list(full_steps)} must be strictly increasing")
    if full_steps[0] != 0:
        raise ValueError(f"deepcache.full_steps: {list(full_steps)} must start with 0 (the first evaluation fills the "
                         "cache)")
    return list(full_steps)


def full_steps_for(config, total: int) -> list[int]:
    """The full evaluations of a call with ``total`` U-Net evaluations (per CFG branch) under ``config``."""
    if config.schedule == "uniform":
        return uniform_full_steps(total, config.interval)
    if config.schedule == "nonuniform":
        return nonuniform_full_steps(total, config.interval, config.center, config.power)
    if config.schedule == "explicit":
        return [s for s in explicit_full_steps(config.full_steps) if s < total]
    raise ValueError(f"deepcache.schedule: {config.schedule!r} is not allowed; allowed: uniform, nonuniform, explicit")


def pattern(full_steps: list[int], total: int) -> str:
    """'F' for a full evaluation, 'p' for a partial one, e.g. 'FppFppF'."""
    full = set(full_steps)
    return "".join("F" if i in full else "p" for i in range(total))


def _check_interval(interval: int) -> None:
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ValueError(f"deepcache.interval: {interval!r} is not allowed; allowed: a whole number ≥ 1")
