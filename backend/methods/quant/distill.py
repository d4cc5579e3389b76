"""The data-free distillation loss of EfficientDM / QAT fine-tuning: teacher and student see the same x_t.

- ``guided`` (the paper): MSE between the CFG-combined noise predictions e_u + g·(e_c − e_u).
- ``branches``: the mean of the MSEs of the unconditional and the conditional predictions, each against the
  teacher's. The guided target constrains only one combination of the two branches, so a student can lower it
  while its guidance direction e_c − e_u (what makes the image follow the prompt) drifts from the teacher's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backend.methods.conditioning import TextCond
from backend.methods.quant.calibrate import branch_eps

TARGETS = ("guided", "branches")


def distill_loss(teacher, student, x: torch.Tensor, t, cond: TextCond, uncond: TextCond, guidance: float,
                 target: str = "guided") -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, the teacher's guided noise prediction, which steps the trajectory)."""
    if target not in TARGETS:
        raise ValueError(f"distill_target {target!r} is not allowed; allowed: {', '.join(TARGETS)}")
    with torch.no_grad():
        tu, tc = branch_eps(teacher, x, t, cond, uncond)
    su, sc = branch_eps(student, x, t, cond, uncond)
    e_t = tu + guidance * (tc - tu)
    if target == "guided":
        return F.mse_loss(su + guidance * (sc - su), e_t), e_t
    return 0.5 * (F.mse_loss(su, tu) + F.mse_loss(sc, tc)), e_t
