"""Training-free few-step schedules: the Variant section ``"schedule"``."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from backend.methods.params import MethodConfig, param

KINDS = ("tcd", "ays")
AYS_STEPS = 10  # diffusers ships 10-step Align-Your-Steps lists only


@dataclasses.dataclass
class ScheduleConfig(MethodConfig):
    """``{"kind": "tcd", "eta": 0.3}`` with a consistency student, or ``{"kind": "ays"}`` (10 steps) on a base model."""

    section: ClassVar[str] = "schedule"

    kind: str = param("ays", "tcd: TCDScheduler (Zheng et al. 2024) sampling a consistency student (LCM-LoRA / LCD) "
                             "· ays: Align-Your-Steps 10-step timesteps (Sabour et al. 2024) with DPM-Solver++ 2M",
                      choices=KINDS)
    eta: float = param(0.3, "tcd: gamma, the stochasticity of each step (0 = deterministic; the TCD paper's "
                            "default 0.3)", minimum=0.0, maximum=1.0)

    def check_variant(self, variant) -> None:
        if variant.scheduler is not None:
            raise ValueError(f"schedule and scheduler {variant.scheduler!r} are incompatible: the schedule sets the "
                             "sampler (omit scheduler)")
        student = "consistency" in variant.sections
        if self.kind == "tcd" and not student:
            raise ValueError("schedule.kind 'tcd' samples a consistency student; add a consistency section "
                             "(an LCM-LoRA or LCD checkpoint)")
        if self.kind == "ays" and student:
            raise ValueError("schedule.kind 'ays' is for a base model; a consistency student samples with lcm or tcd")
        if self.kind == "ays" and variant.steps != AYS_STEPS:
            raise ValueError(f"steps: {variant.steps} with schedule.kind 'ays'; allowed: {AYS_STEPS} (diffusers "
                             f"ships {AYS_STEPS}-step Align-Your-Steps lists)")
