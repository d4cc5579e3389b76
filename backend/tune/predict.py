"""What a stack's confirmation will say, predicted from few prompts: the lower end of its paired quality interval at
n fresh prompts, and the n it needs to clear the tolerance.

**accuracy.** The paired prompt-accuracy delta is the mean of per-prompt verdict differences x ∈ {−1, 0, +1}
(stack vs the same-seed baseline). With r the discordance rate (share of prompts whose verdict flips) and d the mean
delta, var(x) = r − d², so the 95% interval at n prompts ends near d − z·sqrt((r − d²)/n): how low it reaches
depends on how often verdicts flip, which four screening prompts cannot count. Two signals fix that:

- *flips seen*, shrunk (empirical Bayes, K pseudo-prompts) toward
- *flips expected from the pixels*: a logistic model of P(flip | PSNR of the image vs the same-seed baseline),
  fitted on every image the search has judged — a stack whose images stay close to the baseline's rarely flips a
  verdict; one whose images differ everywhere flips as often as the judge disagrees with itself.

The share of flips that are losses is shrunk the same way toward the pooled share, so d = r·(1 − 2q).

**psnr.** The interval's half-width scales as 1/sqrt(n): the measured interval, rescaled to n.
"""

from __future__ import annotations

import math

import numpy as np

Z = 1.96  # the 95% intervals of backend.metrics.paired
K = 8  # pseudo-prompts of the pixel model's flip rate against a stack's own flips
PSNR_CAP = 60.0  # dB: identical 8-bit images (infinite PSNR) count as this


def psnr_db(mse: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB) from per-image MSE, identical images at PSNR_CAP."""
    mse = np.asarray(mse, dtype=float)
    with np.errstate(divide="ignore"):
        return np.minimum(np.where(mse > 0, -10 * np.log10(np.maximum(mse, 1e-30)), PSNR_CAP), PSNR_CAP)


def _fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = 1.0, iters: int = 25) -> np.ndarray:
    """(intercept, slope) of P(y | x) by ridge-penalised Newton steps (finite even when the classes separate)."""
    X = np.stack([np.ones_like(x), x], axis=1)
    w = np.zeros(2)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-X @ w))
        grad = X.T @ (p - y) + ridge * w
        hess = (X * (p * (1 - p))[:, None]).T @ X + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


class Predictor:
    """Predicted confirmation of an evaluation (:class:`backend.tune.search.Eval`) for one objective."""

    def __init__(self, objective):
        self.objective = objective
        self.w: np.ndarray | None = None  # logistic P(flip | PSNR/10)
        self.flip_rate = 0.5  # pooled, with one pseudo-flip and one pseudo-agreement
        self.loss_share = 0.5  # pooled share of flips that are losses (Laplace)

    def fit(self, evals: list) -> Predictor:
        """Learn the pixel model and the pooled rates from every judged image of ``evals``."""
        seen = [e for e in evals if e.diffs is not None and e.psnr_db is not None]
        if not seen:
            return self
        x = np.concatenate([np.asarray(e.psnr_db) / 10 for e in seen])
        y = np.concatenate([np.abs(np.asarray(e.diffs)) for e in seen]).astype(float)
        losses = sum(int((np.asarray(e.diffs) < 0).sum()) for e in seen)
        self.flip_rate = (y.sum() + 1) / (len(y) + 2)
        self.loss_share = (losses + 1) / (y.sum() + 2)
        self.w = _fit_logistic(x, y) if len(y) >= 8 and 0 < y.sum() < len(y) else None
        return self

    def pixel_flip_rate(self, e) -> float:
        """Mean P(flip) of the stack's images under the pixel model (the pooled rate before it can be fitted)."""
        if self.w is None or e.psnr_db is None:
            return self.flip_rate
        x = np.asarray(e.psnr_db) / 10
        return float(np.mean(1 / (1 + np.exp(-(self.w[0] + self.w[1] * x)))))

    def rates(self, e) -> tuple[float, float]:
        """(discordance r, mean delta d) as fractions, shrunk toward the pixel model and the pooled loss share."""
        diffs = np.asarray(e.diffs)
        n, flips, losses = len(diffs), int(np.abs(diffs).sum()), int((diffs < 0).sum())
        r = (flips + K * self.pixel_flip_rate(e)) / (n + K)
        q = (losses + 2 * self.loss_share) / (flips + 2)
        return r, r * (1 - 2 * q)

    def low(self, e, n: int) -> float | None:
        """The predicted lower end of the 95% interval at n fresh prompts (the objective's unit)."""
        if e.quality is None:
            return None
        if self.objective.metric == "accuracy" and e.diffs is not None:
            r, d = self.rates(e)
            return 100 * (d - Z * math.sqrt(max(r - d * d, 0.0) / n))
        if e.quality_ci is None:
            return e.quality
        return e.quality - (e.quality - e.quality_ci[0]) * math.sqrt(e.n / n)

    def clears(self, e, n: int) -> bool:
        """Predicted to clear the tolerance at n prompts: its interval does (:meth:`needed_n` ≤ n), or, for accuracy,
        no verdict flips in n prompts is more likely than not (the paired interval is then [0, 0]; this decides at
        small n, where the interval is far from normal)."""
        if self.needed_n(e) <= n:
            return True
        if self.objective.metric != "accuracy" or e.diffs is None or e.quality is None:
            return False
        return (1 - self.rates(e)[0]) ** n >= 0.5

    def needed_n(self, e) -> float:
        """The fewest fresh prompts whose predicted interval clears the tolerance (inf: none will; 1: any)."""
        line = self.objective.line
        if e.quality is None:
            return math.inf
        if self.objective.metric == "accuracy" and e.diffs is not None:
            r, d = self.rates(e)
            margin = d - line / 100
            return math.inf if margin <= 0 else max(1, math.ceil(Z * Z * max(r - d * d, 0.0) / margin ** 2))
        if e.quality_ci is None or e.quality - e.quality_ci[0] <= 0:
            return 1 if e.quality >= line else math.inf
        margin = e.quality - line
        return math.inf if margin <= 0 else max(1, math.ceil(e.n * ((e.quality - e.quality_ci[0]) / margin) ** 2))

    def describe(self) -> dict:
        """The fitted pixel model and pooled rates, for tune.json."""
        return {"p_flip_logit": None if self.w is None else {"intercept": float(self.w[0]),
                                                             "per_10_db": float(self.w[1])},
                "pooled_flip_rate": self.flip_rate, "pooled_loss_share": self.loss_share, "pseudo_prompts": K}
