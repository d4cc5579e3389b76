"""torch.compile as a method: the denoiser is compiled in place, stacks that recompile every step
and a machine without a C++ compiler are refused with one line (nothing compiled)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.runs.build import build_pipeline
from backend.sampling import generate
from backend.variant import Variant, VariantError

BASE = {"model": "tiny-arch", "scheduler": "ddim", "steps": 2}


def test_the_denoiser_is_compiled_in_place_with_the_configured_mode(monkeypatch):
    # a real compile of even tiny-arch takes about a minute on a loaded 2-core CPU: `bench peers` runs real ones;
    # here torch.compile's entry point is recorded and the image checked to be the baseline's
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append((type(self).__name__, kw)))
    variant = Variant.from_dict(BASE)
    base = generate(build_pipeline(variant), variant, ["a red circle"], [0])
    compiled = Variant.from_dict({**BASE, "compile": {"mode": "max-autotune-no-cudagraphs"}})
    image = generate(build_pipeline(compiled), compiled, ["a red circle"], [0])
    assert calls == [("UNet2DConditionModel", {"mode": "max-autotune-no-cudagraphs", "dynamic": False,
                                               "backend": "inductor"})]
    assert np.array_equal(image, base)


def test_no_compiler_is_refused(monkeypatch):
    import backend.methods.compile as compile_method

    monkeypatch.setattr(compile_method.shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match=r"compile.backend 'inductor': no C\+\+ compiler found.*aot_eager"):
        build_pipeline(Variant.from_dict({**BASE, "compile": {}}))


@pytest.mark.parametrize("other", ["deepcache", "diffusers_cache", "tome"])
def test_stacks_that_recompile_every_step_are_refused(other):
    pair = f"({other} and compile|compile and {other})"
    with pytest.raises(VariantError, match=f"{pair} do not stack: .*recompile") as info:
        Variant.from_dict({**BASE, other: {}, "compile": {}})
    assert "\n" not in str(info.value)
