"""int8 by torchao, optimum-quanto and torch dynamic quantization: each applies to a private copy, generates a
different image, and reports the int8 operators that really ran (counted during a denoiser evaluation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.metadata import pipeline_info
from backend.models import load_pipeline
from backend.runs.build import build_pipeline
from backend.sampling import generate
from backend.variant import Variant, VariantError

BASE = {"model": "tiny-arch", "scheduler": "ddim", "steps": 3}
INT8 = {"torchao": "_int_mm", "quanto": "_int_mm", "dynamic": "linear_dynamic"}


@pytest.fixture(scope="module")
def baseline():
    variant = Variant.from_dict(BASE)
    return generate(build_pipeline(variant), variant, ["a red circle"], [0])


@pytest.mark.parametrize("backend", list(INT8))
def test_each_backend_quantizes_generates_and_reports_int8_ops(backend, baseline):
    before = {k: v.clone() for k, v in load_pipeline("tiny-arch").unet.state_dict().items()}
    variant = Variant.from_dict({**BASE, "peer_int8": {"backend": backend, "calib_prompts": 1, "calib_steps": 2}})
    pipe = build_pipeline(variant)
    image = generate(pipe, variant, ["a red circle"], [0])
    assert np.abs(image - baseline).max() > 1e-5
    kernels = pipeline_info(pipe).kernels
    assert kernels.startswith(f"{backend}: int8 ops per denoiser evaluation: ") and f"{INT8[backend]} ×" in kernels
    after = load_pipeline("tiny-arch").unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the cached base keeps its fp32 weights


def test_a_pixart_off_its_aspect_bins_is_calibrated_through_speedlabs_own_call():
    """shapes-dit's sample size is none of PixArt's aspect-ratio bins: the stock call (binning on) refuses it, so
    calibration and the operator count go through Speedlab's call, as generation does."""
    variant = Variant.from_dict({"model": "shapes-dit", "scheduler": "ddim", "steps": 2,
                                 "peer_int8": {"backend": "quanto", "calib_prompts": 1, "calib_steps": 1}})
    pipe = build_pipeline(variant)
    assert np.isfinite(generate(pipe, variant, ["a red circle"], [0])).all()
    assert "_int_mm ×" in pipeline_info(pipe).kernels


def test_unknown_backend_and_two_quantizations_are_refused():
    with pytest.raises(VariantError, match=r"peer_int8\.backend: 'onnx' is not allowed; allowed: torchao, quanto"):
        Variant.from_dict({**BASE, "peer_int8": {"backend": "onnx"}})
    with pytest.raises(VariantError, match="do not stack: two quantizations"):
        Variant.from_dict({**BASE, "peer_int8": {}, "quant": {"weight_bits": 8, "act_bits": 8}})


def test_a_missing_package_names_what_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_quanto(name, *args, **kwargs):
        if name.startswith("optimum.quanto"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_quanto)
    from backend.methods.peer_int8 import _need

    with pytest.raises(ValueError, match=r"install it: pip install optimum-quanto==0\.2\.7"):
        _need("quanto")
