"""Training-free few-step schedules diffusers ships: TCD for consistency students, Align-Your-Steps for base models.

``apply(pipe, ScheduleConfig(kind="tcd", eta=0.3))`` replaces the (LCM) scheduler a consistency student set with
diffusers' ``TCDScheduler`` on the same configuration, with the configured gamma. ``kind="ays"`` sets
DPM-Solver++ 2M on the ``AysSchedules`` timesteps of the family: the SDXL list on SDXL, the SD 1.5 list on SD 1.x
and on other U-Nets trained on SD's noise schedule (1000 steps, scaled_linear 0.00085–0.012; the list is then a
valid schedule but was optimized for SD 1.5's denoiser, not theirs); refused elsewhere.
Variant section: ``"schedule": {"kind": "ays"}`` (steps 10).
"""

from __future__ import annotations

from diffusers import DPMSolverMultistepScheduler, TCDScheduler
from diffusers.schedulers import AysSchedules

from backend.methods.schedule.config import AYS_STEPS, KINDS, ScheduleConfig

__all__ = ["KINDS", "ScheduleConfig", "apply", "ays_list"]

SD_NOISE = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


class FixedEtaTCDScheduler(TCDScheduler):
    """TCDScheduler whose gamma is the configured one (pipelines pass their own ``eta``, 0 by default)."""

    gamma: float = 0.3

    def step(self, model_output, timestep, sample, eta: float = 0.3, *args, **kwargs):
        return super().step(model_output, timestep, sample, self.gamma, *args, **kwargs)


class AysScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver++ 2M that always runs the Align-Your-Steps timesteps it was given."""

    ays_timesteps: list[int] = []

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None, **kwargs):
        return super().set_timesteps(device=device, timesteps=list(self.ays_timesteps))


def ays_list(pipe) -> tuple[str, list[int]]:
    """(name, timesteps) of the AYS list that fits the pipeline's model; ValueError where none does."""
    from backend.models import model_family

    family = model_family(pipe)
    if family == "sdxl":
        return "StableDiffusionXLTimesteps", AysSchedules["StableDiffusionXLTimesteps"]
    noise = {k: pipe.scheduler.config.get(k) for k in SD_NOISE}
    if family in ("sd1", "unet") and noise == SD_NOISE:
        return "StableDiffusionTimesteps", AysSchedules["StableDiffusionTimesteps"]
    raise ValueError(f"schedule.kind 'ays': diffusers ships Align-Your-Steps lists for SD 1.5 and SDXL only; this "
                     f"model is {family!r} with noise schedule {noise}; allowed: an SD 1.x / SDXL model or a U-Net "
                     "on SD's noise schedule")


def apply(pipe, config: ScheduleConfig | dict | None = None) -> None:
    """Set the schedule's scheduler on ``pipe`` (in place; the denoiser is untouched)."""
    if not isinstance(config, ScheduleConfig):
        config = ScheduleConfig.from_dict(config)
    if config.kind == "tcd":
        scheduler = FixedEtaTCDScheduler.from_config(pipe.scheduler.config)
        scheduler.gamma = config.eta
    else:
        _, timesteps = ays_list(pipe)
        assert len(timesteps) == AYS_STEPS
        scheduler = AysScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2)
        scheduler.ays_timesteps = list(timesteps)
    pipe.scheduler = scheduler
