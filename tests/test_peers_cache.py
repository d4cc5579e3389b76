"""The diffusers cache hooks on a U-Net: PAB attaches and runs (never-skip equals no cache, each call starts fresh);
the DiT-only hooks are refused with one line; a refused stack leaves the cached base U-Net untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.models import load_pipeline
from backend.runs.build import build_pipeline
from backend.sampling import generate
from backend.variant import Variant, VariantError

BASE = {"model": "tiny-arch", "scheduler": "ddim", "steps": 5}


def _images(extra: dict, calls: int = 1) -> list[np.ndarray]:
    variant = Variant.from_dict({**BASE, **extra})
    pipe = build_pipeline(variant)
    return [generate(pipe, variant, ["a red circle"], [0]) for _ in range(calls)]


def test_pab_never_skipping_equals_no_cache_and_skipping_changes_the_image():
    base = _images({})[0]
    assert np.array_equal(_images({"diffusers_cache": {"kind": "pab", "skip_range": 1}})[0], base)
    first, second = _images({"diffusers_cache": {"kind": "pab", "skip_range": 2, "timestep_from": 0,
                                                 "timestep_to": 1000}}, calls=2)
    assert np.abs(first - base).max() > 1e-5
    assert np.array_equal(first, second)  # 5 steps: a second call would start mid-cycle if state leaked


def _base_state() -> tuple[dict, list, bool]:
    unet = load_pipeline("tiny-arch").unet  # the cached base model
    return ({k: v.clone() for k, v in unet.state_dict().items()},
            [(n, len(m._forward_pre_hooks), len(m._forward_hooks)) for n, m in unet.named_modules()],
            any(hasattr(m, "_diffusers_hook") for m in unet.modules()))


@pytest.mark.parametrize("kind", ["fbc", "faster", "taylorseer", "magcache"])
def test_dit_only_hooks_are_refused_on_a_unet_and_nothing_is_half_applied(kind):
    weights, hooks, diffusers_hooks = _base_state()
    variant = Variant.from_dict({**BASE, "tome": {"ratio": 0.5}, "diffusers_cache": {"kind": kind}})
    with pytest.raises(ValueError, match=rf"diffusers_cache\.kind: '{kind}' does not run on family 'sd1'.*"
                                         r"allowed there: pab"):
        build_pipeline(variant)  # ToMe was applied first, to the variant's private U-Net
    after_weights, after_hooks, after_diffusers = _base_state()
    assert after_hooks == hooks and after_diffusers == diffusers_hooks is False
    assert all(torch.equal(weights[k], after_weights[k]) for k in weights)
    assert not any(type(m).__name__.startswith("ToMe") for m in load_pipeline("tiny-arch").unet.modules())


def test_two_caches_do_not_stack():
    with pytest.raises(VariantError, match="deepcache and diffusers_cache do not stack|diffusers_cache and deepcache"):
        Variant.from_dict({**BASE, "deepcache": {"interval": 2}, "diffusers_cache": {}})
