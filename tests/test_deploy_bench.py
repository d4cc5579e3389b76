"""The deployment benchmark's measurement code on tiny-arch (the rows and their meaning, not speed)."""

import argparse

import pytest

from backend.methods.quant.isa import int8_support
from backend.methods.quant.kernels import unavailable_reason

pytestmark = pytest.mark.skipif(bool(unavailable_reason("cpu")), reason=unavailable_reason("cpu") or "ok")


def _args(*argv):
    from backend.bench import deploy

    parser = argparse.ArgumentParser()
    deploy.add_arguments(parser)
    return parser.parse_args(["--repeats", "1", "--e2e-repeats", "1", "--n", "2", "--calib-steps", "2", *argv])


def test_rows_on_tiny_arch():
    from backend.bench.deploy import _rows_for_model

    rows = _rows_for_model("tiny-arch", ["W8A8"], _args())
    assert [r["config"] for r in rows] == ["fp32", "simulated W8A8", "real W8A8"]
    fp, sim, real = rows
    support = int8_support()
    assert real["kernels"].startswith(f"real int8 kernels (oneDNN, {support.isa.name}")
    assert "simulated" in sim["kernels"]
    assert ("reduce_range" in real["kernels"]) == support.saturates
    assert all(row["isa"].startswith(support.isa.name) for row in rows)
    # measured 50.7 dB (same codes: fp32 summation order only), 43.9 dB with reduce_range (ONEDNN_MAX_CPU_ISA=AVX2)
    assert real["psnr_real_vs_simulated"] > 35
    assert real["weights_mb"] < sim["weights_mb"] and real["weights_vs_fp32"] < 1
    assert real["disk_mb"] == sim["disk_mb"] < fp["disk_mb"]
    for row in rows:
        assert row["unet_ms"] > 0 and row["latency_s"] > 0 and row["speedup"] > 0 and row["unet_speedup"] > 0


@pytest.mark.parametrize("argv, message", [(["--bits", "W3A3"], "--bits"), (["--models", "sdxl"], "--models"),
                                           (["--sd15-size", "100"], "multiple of 64")])
def test_bad_arguments(argv, message):
    from backend.bench.deploy import run

    with pytest.raises(ValueError, match=message):
        run(_args(*argv))
