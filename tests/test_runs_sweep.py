"""Sweep specs (grid -> variants, bad input) and a tiny sweep: baseline first, same seeds, resume after a crash."""

import json

import pytest

from backend.__main__ import main as cli
from backend.runs import sweep as sweep_mod
from backend.runs.store import Store
from backend.runs.sweep import SpecError, load_spec, parse_spec, run_sweep

TINY = {"name": "tiny", "base": {"model": "tiny-arch", "steps": 2},
        "prompts": ["a red circle", "a blue square"], "seed": 5,
        "grid": {"deepcache.interval": [2, 3]},
        "runner": {"repeats": 1, "batch_size": 2, "measure_macs": False}}


def test_grid_to_variants():
    spec = {"base": {"model": "tiny-arch", "steps": 10},
            "grid": {"deepcache.interval": [2, 3, 4], "deepcache.branch": [0, 1]},
            "variants": [{"name": "fewer-steps", "steps": 4, "scheduler": "dpm++"}],
            "prompts": {"set": "single", "n": 4}}
    s = parse_spec(spec)
    assert len(s.variants) == 1 + 6 + 1
    assert s.variants[0].name == "baseline" and "deepcache" not in s.variants[0].sections
    assert s.variants[0].steps == 10 and s.variants[1].name == "interval=2 branch=0"
    assert s.variants[1].sections["deepcache"] == {"interval": 2, "branch": 0}
    assert s.variants[-1].steps == 4 and s.variants[-1].scheduler == "dpm++"
    assert len(s.prompts) == 4 and s.seeds == [0, 1, 2, 3]
    assert s.runner["repeats"] == 3
    assert parse_spec(spec).run_id == s.run_id  # the same spec -> the same run (resume)


def test_base_methods_stay_out_of_the_baseline():
    s = parse_spec({"base": {"model": "tiny-arch", "deepcache": {"interval": 2}},
                    "grid": {"deepcache.interval": [3]}, "prompts": ["a red circle"]})
    assert "deepcache" not in s.variants[0].sections and s.variants[1].sections["deepcache"] == {"interval": 3}


@pytest.mark.parametrize("spec, message", [
    ({"grid": {"deepcache.interval": [2]}, "colour": 1}, "unknown sweep spec key 'colour'"),
    ({"grid": {}}, "empty grid"),
    ({}, "empty grid"),
    ({"grid": {"deepcache.interval": []}}, "empty grid"),
    ({"grid": {"bogus.interval": [2]}}, "unknown key 'bogus.interval'"),
    ({"grid": {"steps.x": [2]}}, "only method sections"),
    ({"grid": {"deepcache.intervall": [2]}}, "unknown key 'intervall'"),
    ({"grid": {"deepcache.interval": 2}}, "expected a list"),
    ({"grid": {"deepcache.interval": [0]}}, "deepcache.interval"),
    ({"grid": {"steps": [2]}, "runner": {"repeat": 1}}, "runner: unknown key 'repeat'"),
    ({"grid": {"steps": [2]}, "prompts": {"set": "single", "n": 0}}, "out of range"),
    ({"grid": {"steps": [2]}, "prompts": []}, "non-empty"),
    ({"grid": {"steps": [2]}, "base": {"colour": 1}}, "unknown variant key 'colour'"),
    ({"variants": [{"name": "a"}, {"name": "a"}]}, "used twice"),
])
def test_bad_specs(spec, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(spec)


def test_load_spec_files(tmp_path):
    y = tmp_path / "s.yaml"
    y.write_text("grid:\n  deepcache.interval: [2, 3]\nprompts: [a red circle]\n")
    assert load_spec(y)["grid"] == {"deepcache.interval": [2, 3]}
    j = tmp_path / "s.json"
    j.write_text(json.dumps(TINY))
    assert load_spec(j)["name"] == "tiny"
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [unclosed\n")
    with pytest.raises(SpecError, match="malformed YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="not an existing file"):
        load_spec(tmp_path / "missing.yaml")


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("grid: {}\n")
    assert cli(["sweep", str(spec), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "empty grid" in err and "\n" not in err
    assert not (tmp_path / "run").exists()  # nothing written


def test_sweep_runs_resumes_and_keeps_finished_variants(tmp_path, monkeypatch):
    s = parse_spec(TINY)
    calls = []
    real = sweep_mod.measure

    def crashing(variant, prompts, seeds, runner, on_progress=None, baseline=None):
        calls.append(variant["name"])
        if variant["name"] == "interval=3":
            raise KeyboardInterrupt  # the process dies mid-sweep
        return real(variant, prompts, seeds, runner, on_progress, baseline)

    monkeypatch.setattr(sweep_mod, "measure", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(s, tmp_path / "run")
    assert calls == ["baseline", "interval=2", "interval=3"]  # baseline first
    with Store(tmp_path / "run") as st:
        assert [v["status"] for v in st.variants(s.run_id)] == ["done", "done", "pending"]

    calls.clear()
    monkeypatch.setattr(sweep_mod, "measure", lambda *a, **k: (calls.append(a[0]["name"]), real(*a, **k))[1])
    seen = []
    outcome = run_sweep(s, tmp_path / "run", on_progress=lambda d, t: seen.append((d, t)))
    assert calls == ["interval=3"] and outcome.skipped == [0, 1] and outcome.done == [2]
    assert seen[-1] == (2, 2)
    with Store(tmp_path / "run") as st:
        run = st.run()
        variants = st.variants(run["id"])
        assert run["status"] == "done" and run["seeds"] == [5, 6]
        assert [v["status"] for v in variants] == ["done"] * 3
        for v in variants:
            assert [im["seed"] for im in v["images"]] == [5, 6]
            assert v["metrics"]["latency_s"] > 0 and v["metrics"]["unet_evals"] > 0
        base = variants[0]["metrics"]  # the baseline timed against itself: its interval shows the noise
        assert base["speedup"] > 0 and "speedup_ci" in base
        job = st.job(f"sweep-{run['id']}")
        assert job["status"] == "done" and job["progress"]["done"] == 3
        assert run["environment"]["torch"] and run["settings"]["executor"] == "local"


def test_failing_variant_is_recorded_and_the_rest_go_on(tmp_path, monkeypatch):
    spec = dict(TINY, grid={"deepcache.branch": [0, 60]})  # branch 60 does not exist in tiny-arch
    s = parse_spec(spec)
    monkeypatch.setattr(sweep_mod.LocalExecutor, "run", _fake_run)
    outcome = run_sweep(s, tmp_path / "run")
    assert outcome.done == [0, 1] and list(outcome.failed) == [2]
    with Store(tmp_path / "run") as st:
        v = st.variants(s.run_id)
        assert v[2]["status"] == "failed" and "branch" in v[2]["error"]
        assert st.run()["status"] == "failed"


def _fake_run(self, sweep, indices, on_images, on_start=lambda i: None):
    import numpy as np

    for idx in indices:
        v = sweep.variants[idx]
        if v.sections.get("deepcache", {}).get("branch") == 60:
            yield idx, None, ValueError("deepcache.branch: 60 is out of range for this model")
            continue
        images = np.full((len(sweep.prompts), 8, 8, 3), 100 + idx, np.uint8)
        yield idx, (images, {"latency_s": 1.0 / (idx + 1), "unet_evals": 4.0}), None


def test_executor_choice():
    with pytest.raises(ValueError, match="allowed: local, ray"):
        sweep_mod.make_executor("dask")
    with pytest.raises(ValueError, match="only for --executor ray"):
        sweep_mod.make_executor("local", "127.0.0.1:6379")
