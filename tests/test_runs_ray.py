"""The Ray executor on a local Ray instance with one CPU (Ray is pinned in requirements.txt: these tests run in CI).
One Ray instance serves the module and is shut down at its end."""

import pytest
import ray


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
    assert not ray.is_initialized()


def test_ray_executor_one_task_per_variant(tmp_path):
    from backend.runs.store import Store
    from backend.runs.sweep import parse_spec, run_sweep

    s = parse_spec({"base": {"model": "tiny-arch", "steps": 1}, "prompts": ["a red circle"],
                    "grid": {"deepcache.interval": [2]},
                    "runner": {"repeats": 1, "batch_size": 1, "measure_macs": False}})
    outcome = run_sweep(s, tmp_path / "run", executor="ray")
    assert outcome.done == [0, 1] and not outcome.failed
    with Store(tmp_path / "run") as st:
        variants = st.variants(s.run_id)
        assert st.run()["settings"]["executor"] == "ray"
        assert all(v["status"] == "done" and v["metrics"]["latency_s"] > 0 for v in variants)
        assert variants[1]["metrics"]["worker"]


def test_tune_spreads_its_evaluations_over_ray(tmp_path):
    from backend.runs.store import Store
    from backend.tune.search import Plan, run_tune

    plan = Plan(screen_n=1, promote_n=1, promote_repeats=1, promote_k=1, confirm_n=1, confirm_repeats=1)
    space = {"methods": ["deepcache"], "values": {"deepcache.interval": [2]}, "fixed": {"steps": 1}}
    result = run_tune("tiny-arch", "hard", 0, tmp_path / "tune", space, "psnr", plan=plan, executor="ray")
    assert result["recommended"]["deepcache"] == {"interval": 2}
    with Store(tmp_path / "tune") as st:
        runs = st.runs()
        assert {r["settings"]["executor"] for r in runs} == {"ray"}
        assert all(v["metrics"]["worker"] for r in runs for v in st.variants(r["id"])[1:])
