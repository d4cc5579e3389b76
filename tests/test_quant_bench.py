"""bench quant's time-to-quality comparison (the arithmetic; the benchmark itself is a command)."""

from backend.bench.quant import first_reaching, time_to

EFFDM = [(1.5, 0.72, 33.0), (3.0, 0.94, 35.0), (4.5, 0.96, 35.9), (6.0, 0.96, 35.8)]


def test_first_reaching_takes_the_first_point_at_or_above_the_goal():
    assert first_reaching(EFFDM, 1, 0.95) == 4.5
    assert first_reaching(EFFDM, 2, 35.8) == 4.5
    assert first_reaching(EFFDM, 1, 0.99) is None


def test_time_to_gives_a_ratio_or_a_lower_bound():
    qat = [(10.0, 0.5, 30.0), (30.0, 0.97, 34.0)]
    reached = time_to("accuracy", 1, 0.95, EFFDM, qat, 35.0)
    assert reached == {"efficientdm_minutes_to_accuracy": 4.5, "qat_minutes_to_accuracy": 30.0,
                       "accuracy_speedup": round(30 / 4.5, 2)}
    unmet = time_to("psnr", 2, 35.8, EFFDM, qat, 35.0)
    assert unmet["qat_minutes_to_psnr"] == ">35.0 (not reached)" and unmet["psnr_speedup"] == ">7.8"
    assert time_to("psnr", 2, 40.0, EFFDM, qat, 35.0)["psnr_speedup"] is None
