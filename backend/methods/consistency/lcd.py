"""The mechanism of latent consistency distillation: solver grid, boundary scalings, w-embedding, teacher step.

Follows the description of diffusers' LCD recipe (reference/rglcd.md §1): a DDIM solver grid of N
timesteps with skipping step k = T / N, a teacher ODE step with classifier-free guidance in the LCM
form ``x = cond + w·(cond − uncond)``, and the consistency parameterisation
``f(z, t) = c_skip(t)·z + c_out(t)·x̂0(z, t)`` that satisfies f(z, 0) = z.
"""

from __future__ import annotations

import math

import torch


def boundary_scalings(t: torch.Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0):
    """(c_skip, c_out) of the consistency parameterisation; c_skip(0) = 1 and c_out(0) = 0."""
    scaled = t.float() * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the guidance scale (w·1000), the student's ``timestep_cond``."""
    w = w.float().flatten() * 1000.0
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=w.device) / (half - 1))
    emb = w[:, None] * freqs[None, :]
    emb = torch.cat([emb.sin(), emb.cos()], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class DDIMSolver:
    """The distillation grid: N DDIM timesteps [k−1, 2k−1, …, T−1] with k = T // N, and one DDIM step on it."""

    def __init__(self, alphas_cumprod: torch.Tensor, num_train_timesteps: int = 1000, ddim_timesteps: int = 50):
        if not 1 < ddim_timesteps <= num_train_timesteps:
            raise ValueError(f"num_ddim_timesteps: {ddim_timesteps} is not allowed; "
                             f"allowed: 2 to {num_train_timesteps}")
        self.k = num_train_timesteps // ddim_timesteps
        self.timesteps = (torch.arange(1, ddim_timesteps + 1) * self.k - 1).long()
        self.alphas_cumprod = alphas_cumprod.float()
        self.alpha_at = self.alphas_cumprod[self.timesteps]
        # ᾱ at the previous grid point; at index 0 the step lands on t = 0 (ᾱ_0)
        self.alpha_prev = torch.cat([self.alphas_cumprod[:1], self.alpha_at[:-1]])

    def __len__(self) -> int:
        return len(self.timesteps)

    def start_and_end(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t_{n+k} = grid[index] and t_n = t_{n+k} − k (clamped at 0)."""
        start = self.timesteps[index]
        return start, (start - self.k).clamp(min=0)

    def ddim_step(self, pred_x0: torch.Tensor, pred_eps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        a_prev = _bcast(self.alpha_prev.to(pred_x0.device)[index], pred_x0)
        return a_prev.sqrt() * pred_x0 + (1 - a_prev).sqrt() * pred_eps


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def x0_and_eps(model_out: torch.Tensor, z: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor,
               prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted clean latent and noise for a U-Net output of any prediction type."""
    a = _bcast(alphas_cumprod.to(z.device)[t], z)
    alpha, sigma = a.sqrt(), (1 - a).sqrt()
    if prediction_type == "epsilon":
        eps = model_out
        x0 = (z - sigma * eps) / alpha
    elif prediction_type == "sample":
        x0 = model_out
        eps = (z - alpha * x0) / sigma
    elif prediction_type == "v_prediction":
        x0 = alpha * z - sigma * model_out
        eps = alpha * model_out + sigma * z
    else:
        raise ValueError(f"prediction_type {prediction_type!r} is not supported; "
                         "allowed: epsilon, sample, v_prediction")
    return x0, eps


def consistency_output(model_out, z, t, alphas_cumprod, prediction_type, timestep_scaling: float = 10.0):
    """f(z, t) = c_skip·z + c_out·x̂0."""
    x0, _ = x0_and_eps(model_out, z, t, alphas_cumprod, prediction_type)
    c_skip, c_out = boundary_scalings(t, timestep_scaling=timestep_scaling)
    return _bcast(c_skip, z) * z + _bcast(c_out, z) * x0


def distill_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "huber", huber_c: float = 0.001) -> torch.Tensor:
    if kind == "l2":
        return torch.nn.functional.mse_loss(pred.float(), target.float())
    if kind == "huber":
        return (torch.sqrt((pred.float() - target.float()) ** 2 + huber_c**2) - huber_c).mean()
    raise ValueError(f"loss {kind!r} is not allowed; allowed: huber, l2")
