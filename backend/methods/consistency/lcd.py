"""The mechanism of latent consistency distillation: solver grid, boundary scalings, w-embedding, teacher step.

Follows the description of diffusers' LCD recipe (reference/rglcd.md §1): a DDIM solver grid of N
timesteps with skipping step k = T / N, a teacher ODE step with classifier-free guidance in the LCM
form ``x = cond + w·(cond − uncond)``, and the consistency parameterisation
``f(z, t) = c_skip(t)·z + c_out(t)·x̂0(z, t)`` that satisfies f(z, 0) = z.

The noise schedule is a :class:`NoiseSchedule` — z_t = α_t·x0 + σ_t·ε — so the same solver and parameterisation
serve DDPM-type models (α_t = √ᾱ_t) and flow-matching ones (α_t = 1 − σ_t, velocity prediction; there f is the x0
prediction itself, what diffusers' FlowMatchLCMScheduler samples with). Where a plain ᾱ tensor is given, it is the
DDPM schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NoiseSchedule:
    """z_t = alpha[t]·x0 + sigma[t]·ε over the training timesteps t = 0…T−1; ``model_t[t]`` is the timestep the
    denoiser is given; ``boundary``: f uses LCM's c_skip / c_out scalings (else f is the x0 prediction)."""

    alpha: torch.Tensor
    sigma: torch.Tensor
    model_t: torch.Tensor
    boundary: bool = True

    @classmethod
    def ddpm(cls, alphas_cumprod: torch.Tensor) -> NoiseSchedule:
        a = alphas_cumprod.float()
        return cls(a.sqrt(), (1 - a).sqrt(), torch.arange(len(a)))

    @classmethod
    def flow(cls, sigmas: torch.Tensor, num_train_timesteps: int = 1000) -> NoiseSchedule:
        """Rectified flow: ``sigmas`` ascending over the training timesteps; the denoiser is given σ·T."""
        s = sigmas.float()
        return cls(1 - s, s, s * num_train_timesteps, boundary=False)

    def to(self, device) -> NoiseSchedule:
        return NoiseSchedule(self.alpha.to(device), self.sigma.to(device), self.model_t.to(device), self.boundary)


def as_schedule(schedule: NoiseSchedule | torch.Tensor) -> NoiseSchedule:
    return schedule if isinstance(schedule, NoiseSchedule) else NoiseSchedule.ddpm(schedule)


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

    def __init__(self, schedule: NoiseSchedule | torch.Tensor, num_train_timesteps: int = 1000,
                 ddim_timesteps: int = 50):
        if not 1 < ddim_timesteps <= num_train_timesteps:
            raise ValueError(f"num_ddim_timesteps: {ddim_timesteps} is not allowed; "
                             f"allowed: 2 to {num_train_timesteps}")
        self.k = num_train_timesteps // ddim_timesteps
        self.timesteps = (torch.arange(1, ddim_timesteps + 1) * self.k - 1).long()
        sched = as_schedule(schedule)
        # α and σ at the previous grid point; at index 0 the step lands on t = 0
        prev = torch.cat([torch.zeros(1, dtype=torch.long), self.timesteps[:-1]])
        self.alpha_prev, self.sigma_prev = sched.alpha.float()[prev], sched.sigma.float()[prev]

    def __len__(self) -> int:
        return len(self.timesteps)

    def start_and_end(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t_{n+k} = grid[index] and t_n = t_{n+k} − k (clamped at 0)."""
        start = self.timesteps[index]
        return start, (start - self.k).clamp(min=0)

    def ddim_step(self, pred_x0: torch.Tensor, pred_eps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The DDIM step to the previous grid point (on a flow-matching schedule: the Euler step)."""
        a_prev = _bcast(self.alpha_prev.to(pred_x0.device)[index], pred_x0)
        s_prev = _bcast(self.sigma_prev.to(pred_x0.device)[index], pred_x0)
        return a_prev * pred_x0 + s_prev * pred_eps


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def x0_and_eps(model_out: torch.Tensor, z: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule | torch.Tensor,
               prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted clean latent and noise for a denoiser output of any prediction type ("flow": the velocity
    ε − x0 of a flow-matching model)."""
    sched = as_schedule(schedule)
    alpha, sigma = _bcast(sched.alpha.to(z.device)[t], z), _bcast(sched.sigma.to(z.device)[t], z)
    if prediction_type == "flow":
        x0 = z - sigma * model_out
        eps = z + alpha * model_out
    elif prediction_type == "epsilon":
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
                         "allowed: epsilon, sample, v_prediction, flow")
    return x0, eps


def consistency_output(model_out, z, t, schedule, prediction_type, timestep_scaling: float = 10.0):
    """f(z, t) = c_skip·z + c_out·x̂0 (a schedule without boundary scalings: x̂0)."""
    sched = as_schedule(schedule)
    x0, _ = x0_and_eps(model_out, z, t, sched, prediction_type)
    if not sched.boundary:
        return x0
    c_skip, c_out = boundary_scalings(t, timestep_scaling=timestep_scaling)
    return _bcast(c_skip, z) * z + _bcast(c_out, z) * x0


def distill_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "huber", huber_c: float = 0.001) -> torch.Tensor:
    if kind == "l2":
        return torch.nn.functional.mse_loss(pred.float(), target.float())
    if kind == "huber":
        return (torch.sqrt((pred.float() - target.float()) ** 2 + huber_c**2) - huber_c).mean()
    raise ValueError(f"loss {kind!r} is not allowed; allowed: huber, l2")
