"""ToMe (tomesd) as a Speedlab method: ratio 0 is the baseline bit for bit, a real ratio changes the image, it
stacks with DeepCache, and bad ratios are refused with one line."""

from __future__ import annotations

import numpy as np
import pytest

from backend.runs.build import build_pipeline
from backend.sampling import generate
from backend.variant import Variant, VariantError

BASE = {"model": "tiny-arch", "scheduler": "ddim", "steps": 4}


def _image(extra: dict) -> np.ndarray:
    variant = Variant.from_dict({**BASE, **extra})
    return generate(build_pipeline(variant), variant, ["a red circle"], [0])


def test_ratio_zero_is_bit_identical_and_a_real_ratio_changes_the_image():
    base = _image({})
    assert np.array_equal(_image({"tome": {"ratio": 0.0}}), base)
    merged = _image({"tome": {"ratio": 0.5}})
    assert np.abs(merged - base).max() > 1e-4
    assert np.array_equal(_image({"tome": {"ratio": 0.5}}), merged)  # deterministic: use_rand off


def test_tome_stacks_with_deepcache():
    both = _image({"tome": {"ratio": 0.5}, "deepcache": {"interval": 2}})
    assert np.abs(both - _image({"deepcache": {"interval": 2}})).max() > 1e-4
    assert np.abs(both - _image({"tome": {"ratio": 0.5}})).max() > 1e-4


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_a_ratio_outside_zero_to_one_is_refused(ratio):
    with pytest.raises(VariantError, match=r"tome\.ratio.*allowed") as info:
        Variant.from_dict({**BASE, "tome": {"ratio": ratio}})
    assert "\n" not in str(info.value)
