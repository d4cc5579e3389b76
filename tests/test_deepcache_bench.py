"""The DeepCache benchmark's measurement code, on the tiny random pipeline (shapes of rows, not speed)."""

import argparse

import pytest


def _args(**kw):
    from backend.bench import deepcache as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--device", "cpu", "--repeats", "1", "--n", "2"])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_speed_rows_on_tiny_arch():
    from backend.bench.deepcache import _speed_rows
    from backend.methods.deepcache import get_hook
    from backend.models import load_pipeline

    names = ["baseline", "uniform-n3-b0", "nonuniform-n5-b1"]
    rows = _speed_rows("tiny-arch", 6, 32, names, _args())
    assert [r["config"] for r in rows] == names
    base, n3, nu = rows
    assert (base["full_evals"], base["partial_evals"]) == (6, 0)
    assert (n3["full_evals"], n3["partial_evals"]) == (2, 4)
    assert nu["full_evals"] + nu["partial_evals"] == 6
    assert base["macs_speedup"] == 1.0 and n3["macs_speedup"] > 1.5
    for row in rows:
        for key in ("latency_s", "speedup", "loop_speedup", "loop_vs_macs", "peak_mem_mb", "cache_mb"):
            assert row[key] is not None and row[key] >= 0, key
    assert n3["cache_mb"] == pytest.approx(2 * 8 * 16 * 16 * 4 / 1e6)  # [CFG 2, 8 channels, 16x16 latent] fp32
    assert get_hook(load_pipeline("tiny-arch")) is None


def test_bad_bench_arguments():
    from backend.bench.deepcache import run

    with pytest.raises(ValueError, match="--models"):
        run(_args(models="sd14"))
    with pytest.raises(ValueError, match="--configs"):
        run(_args(models="sd15-arch", configs="uniform-n4-b0"))
    with pytest.raises(ValueError, match="--repeats"):
        run(_args(models="sd15-arch", repeats=0))
