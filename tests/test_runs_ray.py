"""The Ray executor on a local Ray instance (skipped where Ray is not installed: it is an optional dependency)."""

import pytest

ray = pytest.importorskip("ray", reason="Ray is optional (pip install ray); the Ray executor test needs it")


def test_ray_executor_one_task_per_variant(tmp_path):
    from backend.runs.store import Store
    from backend.runs.sweep import parse_spec, run_sweep

    s = parse_spec({"base": {"model": "tiny-arch", "steps": 1}, "prompts": ["a red circle"],
                    "grid": {"deepcache.interval": [2]},
                    "runner": {"repeats": 1, "batch_size": 1, "measure_macs": False}})
    try:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
        outcome = run_sweep(s, tmp_path / "run", executor="ray")
    finally:
        ray.shutdown()
    assert outcome.done == [0, 1] and not outcome.failed
    with Store(tmp_path / "run") as st:
        variants = st.variants(s.run_id)
        assert st.run()["settings"]["executor"] == "ray"
        assert all(v["status"] == "done" and v["metrics"]["latency_s"] > 0 for v in variants)
        assert variants[1]["metrics"]["worker"]
