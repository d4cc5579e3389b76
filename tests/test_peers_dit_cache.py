"""The diffusers cache hooks on the tiny DiT builds, per family × cache: each one that is offered attaches, runs
bit-identical to no cache at its never-skip setting, changes the image when it skips, and starts every call from a
fresh state (two calls, one image); the pairs of config.REFUSED are refused in one line naming family and cache."""

from __future__ import annotations

import numpy as np
import pytest

from backend.methods.diffusers_cache import REFUSED
from backend.runs.build import build_pipeline
from backend.sampling import generate
from backend.variant import Variant

FAMILIES = ("pixart", "sd3", "flux")
NEVER = {"pab": {"skip_range": 1}, "faster": {"skip_range": 1}, "fbc": {"threshold": 0.0},
         "taylorseer": {"skip_range": 1}, "magcache": {"skip_range": 1}}
SKIP = {"pab": {"skip_range": 2, "timestep_from": 0, "timestep_to": 1000},
        "faster": {"skip_range": 2, "timestep_from": 0, "timestep_to": 1000}, "fbc": {"threshold": 0.5},
        "taylorseer": {"skip_range": 3}, "magcache": {"skip_range": 3, "threshold": 0.5}}
RUNS = [(f, k) for f in FAMILIES for k in REFUSED if f not in REFUSED[k]]
REFUSES = [(f, k) for f in FAMILIES for k in REFUSED if f in REFUSED[k]]
_BASE: dict = {}


def _variant(family: str, cache: dict | None = None) -> Variant:
    return Variant.from_dict({"model": f"tiny-{family}", "steps": 6,
                              **({"diffusers_cache": cache} if cache else {})})


def _base(family: str) -> np.ndarray:
    if family not in _BASE:
        v = _variant(family)
        _BASE[family] = generate(build_pipeline(v), v, ["a red circle"], [0])
    return _BASE[family]


def test_every_dit_family_is_covered():
    assert {f for f, _ in RUNS} == set(FAMILIES) and len(RUNS) + len(REFUSES) == len(FAMILIES) * len(REFUSED)


@pytest.mark.parametrize(("family", "kind"), RUNS)
def test_cache_attaches_and_never_skipping_is_bit_identical(family, kind):
    v = _variant(family, {"kind": kind, **NEVER[kind]})
    pipe = build_pipeline(v)
    from backend.models import denoiser

    assert any(getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.hooks
               for m in denoiser(pipe).modules())
    assert np.array_equal(generate(pipe, v, ["a red circle"], [0]), _base(family))


@pytest.mark.parametrize(("family", "kind"), RUNS)
def test_skipping_changes_the_image_and_each_call_starts_fresh(family, kind):
    v = _variant(family, {"kind": kind, **SKIP[kind]})
    pipe = build_pipeline(v)
    first, second = (generate(pipe, v, ["a red circle"], [0]) for _ in range(2))
    assert np.isfinite(first).all() and np.abs(first - _base(family)).max() > 0
    assert np.array_equal(first, second)  # leaked state would start the second call mid-cycle


@pytest.mark.parametrize(("family", "kind"), REFUSES)
def test_refused_pairs_name_family_and_cache_in_one_line(family, kind):
    with pytest.raises(ValueError, match=rf"diffusers_cache\.kind: '{kind}' does not run on family '{family}'") as exc:
        build_pipeline(_variant(family, {"kind": kind}))
    assert "\n" not in str(exc.value) and "allowed there: pab" in str(exc.value)


def test_magcache_calibrates_on_the_model_at_build_and_fits_its_ratios_to_each_calls_steps():
    """MagCache's ratios come from a calibration run on the model (one per step of its default step count, 1.0 first,
    the same on every build); a call at another step count runs with them interpolated to its own steps."""
    from diffusers.hooks.mag_cache import _MAG_CACHE_LEADER_BLOCK_HOOK

    from backend.methods.diffusers_cache.magcache import calibrate
    from backend.models import denoiser, model_defaults

    v = _variant("pixart", {"kind": "magcache", **SKIP["magcache"]})
    pipe = build_pipeline(v)
    net = denoiser(pipe)
    hook = next(m._diffusers_hook.get_hook(_MAG_CACHE_LEADER_BLOCK_HOOK) for m in net.modules()
                if getattr(m, "_diffusers_hook", None) is not None
                and m._diffusers_hook.get_hook(_MAG_CACHE_LEADER_BLOCK_HOOK) is not None)
    live = hook.config
    assert not live.calibrate and live.num_inference_steps == model_defaults(pipe)["steps"] != v.steps
    generate(pipe, v, ["a red circle"], [0])
    assert live.num_inference_steps == v.steps and len(live.mag_ratios) == v.steps
    plain = build_pipeline(_variant("pixart"))
    ratios = calibrate(plain, denoiser(plain), 6)
    assert len(ratios) == 6 and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    assert calibrate(plain, denoiser(plain), 6) == ratios  # a fixed prompt and seed: the same ratios every build
