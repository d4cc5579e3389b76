"""Pixel-level quality against a same-seed baseline, on the 8-bit images a saved PNG has: PSNR and SSIM with their
paired bootstrap intervals. No model is involved: the judge-based metrics (backend/metrics/quality.py) and the
optional scorers (backend/metrics/scorers.py) both build on this module.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class QualityUnavailable(ValueError):
    """A quality metric that cannot be computed for this model or these prompts."""


def as_8bit(images) -> np.ndarray:
    """Float images in [0, 1] rounded to the 8-bit levels a saved PNG has: every entry point (evaluate, sweeps
    from stored PNGs, the workbench) then measures the same numbers. Idempotent."""
    return np.round(np.clip(np.asarray(images, dtype=np.float64), 0.0, 1.0) * 255) / 255


def _psnr(mse: float) -> float:
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def psnr_ssim(images, baseline) -> tuple[float, float]:
    """PSNR (dB, of the pooled MSE: infinite iff identical) and mean SSIM of 8-bit images vs the same-seed
    baseline."""
    psnr, ssim = psnr_ssim_per_image(images, baseline)
    return _psnr(float(psnr.mean())), float(ssim.mean())


def psnr_ssim_per_image(images, baseline) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the MSE against the baseline (PSNR pools it) and SSIM."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    a = torch.as_tensor(as_8bit(images)).permute(0, 3, 1, 2)
    b = torch.as_tensor(as_8bit(baseline)).permute(0, 3, 1, 2)
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3)).numpy()
    ssim = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none").numpy()
    return mse, ssim


def paired_pixels(images, baseline, seed: int = 0) -> dict:
    """psnr_vs_baseline and ssim_vs_baseline, with their bootstrap 95% intervals (``_ci``) when n > 1."""
    from backend.metrics.paired import bootstrap_interval

    mse, ssim = psnr_ssim_per_image(images, baseline)
    out: dict = {"psnr_vs_baseline": _psnr(float(mse.mean())), "ssim_vs_baseline": float(ssim.mean())}
    if len(mse) > 1:
        out["psnr_vs_baseline_ci"] = bootstrap_interval(mse, lambda m: _psnr(float(m.mean())), seed=seed)
        out["ssim_vs_baseline_ci"] = bootstrap_interval(ssim, np.mean, seed=seed)
    return out
