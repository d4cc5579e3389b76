"""DeepCache's knobs: the Variant section ``"deepcache"``."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from backend.methods.params import MethodConfig, param

UNET_FAMILIES = ("sd1", "sd2", "sdxl", "unet")  # branch: a U-Net knob; k and m: a transformer's
DIT_FAMILIES = ("pixart", "sd3", "flux")

SCHEDULES = ("uniform", "nonuniform", "explicit")


@dataclasses.dataclass
class DeepCacheConfig(MethodConfig):
    """Reuse the U-Net's deep features (or a transformer's middle blocks) between full evaluations and recompute
    only a shallow branch (the first k and last m transformer blocks).

    ``{"interval": 3, "branch": 0, "schedule": "uniform"}``; ``"schedule": "nonuniform"`` with
    ``center`` and ``power``; or an explicit list of full evaluations, either as
    ``"schedule": [0, 4, 8]`` or ``"schedule": "explicit", "full_steps": [0, 4, 8]``.
    """

    section: ClassVar[str] = "deepcache"

    interval: int = param(3, "N: one full U-Net evaluation every N evaluations (1 = off, bit-identical to the "
                             "baseline); the nonuniform schedule places ceil(T/N) full evaluations",
                          minimum=1, maximum=1000)
    branch: int = param(0, "Skip branch, as the public DeepCache package's cache_branch_id: down block branch // 3, "
                           "layer branch % 3. 0 recomputes only the outermost layer (fastest); larger branches "
                           "recompute more (slower, closer to the baseline). The valid range depends on the model "
                           "(SD 1.5: 0-11, SDXL: 0-8). U-Net models only", minimum=0, maximum=63,
                   families=UNET_FAMILIES)
    first_blocks: int = param(1, "Transformer (DiT) models: k, the first transformer blocks recomputed at every "
                                 "evaluation (FORA / Δ-DiT); the blocks between them and the last m reuse their "
                                 "cached residual", minimum=0, maximum=1000, families=DIT_FAMILIES)
    last_blocks: int = param(1, "Transformer (DiT) models: m, the last transformer blocks recomputed at every "
                                "evaluation; k + m must leave at least one block to cache", minimum=0, maximum=1000,
                            families=DIT_FAMILIES)
    schedule: str = param("uniform", "Which evaluations run in full: uniform (every N-th), nonuniform (the "
                                     "paper's quadratic schedule, dense around `center`), or explicit (full_steps)",
                          choices=SCHEDULES)
    center: int = param(15, "Nonuniform schedule: the evaluation index around which full evaluations are densest",
                        minimum=0, maximum=10000)
    power: float = param(1.4, "Nonuniform schedule: the power p of the quadratic spacing (> 1; the paper uses "
                              "1.2-1.5); lowered by 0.02 until the schedule has ceil(T/N) distinct steps",
                         minimum=1.0, maximum=4.0)
    full_steps: list = param([], "Explicit schedule: the U-Net evaluation indices of a call that run in full, "
                                 "starting with 0", ui=False)

    @classmethod
    def from_dict(cls, data: dict | None) -> DeepCacheConfig:
        """Also accepts ``"schedule": [0, 4, 8]`` as a shorthand for the explicit schedule."""
        if isinstance(data, dict) and isinstance(data.get("schedule"), (list, tuple)):
            data = dict(data)
            if data.get("full_steps"):
                raise ValueError("deepcache: give the explicit full steps once, in schedule or in full_steps")
            data["full_steps"] = list(data["schedule"])
            data["schedule"] = "explicit"
        return super().from_dict(data)

    def validate(self) -> None:
        from backend.methods.deepcache.schedule import explicit_full_steps

        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f"deepcache.interval: {self.interval!r} is not allowed; allowed: a whole number ≥ 1")
        if isinstance(self.branch, bool) or not isinstance(self.branch, int) or self.branch < 0:
            raise ValueError(f"deepcache.branch: {self.branch!r} is not allowed; allowed: a whole number ≥ 0 "
                             "(the model's range is checked when applied)")
        for key in ("first_blocks", "last_blocks"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"deepcache.{key}: {value!r} is not allowed; allowed: a whole number ≥ 0 (the "
                                 "model's block count is checked when applied)")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"deepcache.schedule: {self.schedule!r} is not allowed; allowed: "
                             f"{', '.join(SCHEDULES)}, or a list of full steps")
        if not self.power > 1:
            raise ValueError(f"deepcache.power: {self.power} is not allowed; allowed: a number > 1")
        if self.schedule == "explicit":
            explicit_full_steps(self.full_steps)
        elif self.full_steps:
            raise ValueError(f"deepcache.full_steps: given with schedule {self.schedule!r}; full_steps needs "
                             "schedule 'explicit'")

    def label(self) -> str:
        """"DeepCache N=5", with the branch and schedule when they are not the defaults."""
        parts = [f"DeepCache N={self.interval}" if self.schedule != "explicit" else "DeepCache explicit"]
        parts += [f"branch {self.branch}"] if self.branch else []
        parts += [self.schedule] if self.schedule == "nonuniform" else []
        return " ".join(parts)

    @property
    def enabled(self) -> bool:
        """False when every evaluation is full (interval 1 with a uniform schedule)."""
        return not (self.schedule == "uniform" and self.interval == 1)


def curve_label(cfg: dict) -> str:
    """The line of the per-method curves a DeepCache section belongs to (its branch and schedule)."""
    schedule = cfg.get("schedule", "uniform")
    if not isinstance(schedule, str):
        return "DeepCache N (explicit)"
    return f"DeepCache N (branch {cfg.get('branch', 0)}, {schedule})"
