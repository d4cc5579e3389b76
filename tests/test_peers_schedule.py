"""Few-step schedules: Align-Your-Steps on a base model (10 steps, SD's noise schedule) and TCD on a consistency
student (its gamma matters); clashes are refused with one line."""

from __future__ import annotations

import numpy as np
import pytest

from backend.runs.build import build_pipeline
from backend.sampling import generate
from backend.variant import Variant, VariantError

LORA = "assets/rg-lcm-lora"


def _image(data: dict) -> np.ndarray:
    variant = Variant.from_dict(data)
    pipe = build_pipeline(variant)
    return generate(pipe, variant, ["a large red circle"], [0]), pipe


def test_ays_runs_its_ten_timesteps_and_changes_the_image():
    image, pipe = _image({"model": "tiny-arch", "steps": 10, "schedule": {"kind": "ays"}})
    from diffusers.schedulers import AysSchedules

    assert [int(t) for t in pipe.scheduler.timesteps] == AysSchedules["StableDiffusionTimesteps"]
    base, _ = _image({"model": "tiny-arch", "steps": 10, "scheduler": "dpm++"})
    assert np.abs(image - base).max() > 1e-5


def test_tcd_samples_the_student_and_its_eta_matters(shapes_available):
    student = {"model": "shapes", "steps": 4, "consistency": {"checkpoint": LORA}}
    lcm, _ = _image(student)
    tcd, pipe = _image({**student, "schedule": {"kind": "tcd", "eta": 0.3}})
    assert type(pipe.scheduler).__name__ == "FixedEtaTCDScheduler"
    tcd0, _ = _image({**student, "schedule": {"kind": "tcd", "eta": 0.0}})
    assert np.abs(tcd - lcm).max() > 1e-4 and np.abs(tcd - tcd0).max() > 1e-4


@pytest.mark.parametrize("data, message", [
    ({"model": "tiny-arch", "steps": 8, "schedule": {"kind": "ays"}},
     r"steps: 8 with schedule.kind 'ays'; allowed: 10"),
    ({"model": "tiny-arch", "steps": 4, "schedule": {"kind": "tcd"}}, r"'tcd' samples a consistency student"),
    ({"model": "tiny-arch", "steps": 10, "scheduler": "ddim", "schedule": {}}, r"the schedule sets the sampler"),
    ({"model": "tiny-arch", "schedule": {"kind": "dpm"}}, r"schedule\.kind: 'dpm' is not allowed; allowed: tcd, ays"),
])
def test_clashes_are_refused_with_one_line(data, message):
    with pytest.raises(VariantError, match=message) as info:
        Variant.from_dict(data)
    assert "\n" not in str(info.value)
