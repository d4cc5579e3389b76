"""torch.compile as a method: the compiled denoiser gives the baseline's image, stacks that recompile every step
and a machine without a C++ compiler are refused with one line (nothing compiled)."""

from __future__ import annotations

import numpy as np
import pytest

from backend.runs.build import build_pipeline
from backend.sampling import generate
from backend.variant import Variant, VariantError

BASE = {"model": "tiny-arch", "scheduler": "ddim", "steps": 2}


def test_a_compiled_denoiser_gives_the_baseline_image():
    variant = Variant.from_dict(BASE)
    base = generate(build_pipeline(variant), variant, ["a red circle"], [0])
    compiled = Variant.from_dict({**BASE, "compile": {"backend": "aot_eager"}})
    pipe = build_pipeline(compiled)
    assert pipe.unet._compiled_call_impl is not None
    np.testing.assert_allclose(generate(pipe, compiled, ["a red circle"], [0]), base, atol=1e-4)


def test_no_compiler_is_refused(monkeypatch):
    import backend.methods.compile as compile_method

    monkeypatch.setattr(compile_method.shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match=r"compile.backend 'inductor': no C\+\+ compiler found.*aot_eager"):
        build_pipeline(Variant.from_dict({**BASE, "compile": {}}))


@pytest.mark.parametrize("other", ["deepcache", "diffusers_cache", "tome"])
def test_stacks_that_recompile_every_step_are_refused(other):
    with pytest.raises(VariantError, match=f"{other} and compile do not stack: .*recompile") as info:
        Variant.from_dict({**BASE, other: {}, "compile": {}})
    assert "\n" not in str(info.value)
