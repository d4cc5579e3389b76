"""Workbench callbacks at the backend level (backend.runs.workbench and app.controls): tiny-arch, few steps."""

import json
import threading
import time
import zipfile

import pytest

from backend.methods.quant.kernels import unavailable_reason
from backend.runs import workbench as wb

PROMPT = "a small red circle in the center"
BASE = {"steps": 4}
DC = {"steps": 4, "deepcache": {"interval": 2}}


def test_compare_baseline_and_deepcache_same_seed():
    rows = wb.compare(PROMPT, 3, [BASE, DC], model="tiny-arch")
    assert [r["name"] for r in rows] == ["baseline", "variant 1"]
    base, dc = rows
    assert base["image"].shape == dc["image"].shape and base["image"].dtype.name == "uint8"
    assert base["speedup"] == 1.0 and base["psnr_vs_baseline"] is None
    assert dc["latency_s"] > 0 and dc["psnr_vs_baseline"] is not None
    assert dc["unet_evals"] == base["unet_evals"] == 8  # 4 steps × CFG
    assert dc["full_steps"] + dc["cached_steps"] == 4 and dc["cached_steps"] > 0
    again = wb.compare(PROMPT, 3, [BASE], model="tiny-arch")  # cached pipeline, same seed → same image
    assert (again[0]["image"] == base["image"]).all()
    line = wb.metrics_line(dc)
    assert "PSNR" in line and "U-Net evals" in line and "×" in line
    assert json.dumps(wb.jsonable_rows(rows))  # no images, JSON-safe


@pytest.mark.skipif(bool(unavailable_reason("cpu")), reason="no oneDNN int8 kernels here")
def test_compare_says_which_kernels_ran():
    quant = {"steps": 3, "quant": {"kernels": "real", "calib_prompts": 1, "calib_steps": 2, "calib_samples": 2}}
    rows = wb.compare(PROMPT, 3, [{"steps": 3}, quant], model="tiny-arch")
    assert "kernels" not in rows[0]
    assert rows[1]["kernels"].startswith("real int8 kernels") and rows[1]["kernels"] in wb.metrics_line(rows[1])


@pytest.mark.parametrize("prompt,variants,model,needle", [
    ("  ", [BASE], "tiny-arch", "prompt"),
    (PROMPT, [BASE], "no-such/model-offline", "no-such/model-offline"),
    (PROMPT, [BASE, {"steps": 4, "deepcache": {"interval": 0}}], "tiny-arch", "deepcache.interval"),
    (PROMPT, [BASE] * 6, "tiny-arch", "up to 4"),
    (PROMPT, [BASE, {"steps": 4, "consistency": {"checkpoint": "/nonexistent"}}], "tiny-arch", "nonexistent"),
])
def test_compare_bad_input_names_the_value(prompt, variants, model, needle):
    with pytest.raises(ValueError, match=needle.replace("/", ".")):
        wb.compare(prompt, 0, variants, model=model)


def test_compare_cancel_between_steps():
    cancel = threading.Event()
    seen = []

    def on_step(done, total, name):
        seen.append(done)
        if done == 2:
            cancel.set()

    with pytest.raises(wb.GenerationCancelled):
        wb.compare(PROMPT, 0, [{"steps": 20}, DC], model="tiny-arch", on_step=on_step, cancel=cancel)
    assert seen == [1, 2]
    assert wb.DEVICE_LOCK.acquire(blocking=False)  # the device is free again
    wb.DEVICE_LOCK.release()


def test_sweep_curves_and_report(tmp_path):
    assert wb.sweep_values(1, 8, 3) == [1, 4, 7]
    values = [1, 3]
    rows = wb.sweep(PROMPT, 0, BASE, "deepcache", "interval", values, model="tiny-arch")
    assert [r["value"] for r in rows] == [None, 1, 3]
    assert rows[1]["psnr_vs_baseline"] == 100.0  # interval 1 is the baseline exactly (PSNR capped)
    assert rows[2]["unet_evals"] == 8
    front = wb.pareto_front(rows[1:])
    assert front and all(r in rows for r in front)
    fig = wb.curves_figure(rows)
    assert any(t.name == "Pareto front" for t in fig.data)
    assert wb.method_curves_figure(rows) is not None
    html, bundle = wb.export_report(rows, tmp_path, PROMPT, 0, "sweep")
    assert html.is_file() and "deepcache.interval=3" in html.read_text()
    names = zipfile.ZipFile(bundle).namelist()
    assert {"report.html", "metrics.json", "metrics.csv", "config.json"} <= set(names)
    assert sum(n.startswith("images/") for n in names) == 3


def test_controls_follow_the_declarations():
    import gradio as gr

    from app.controls import coerce, make_control

    for section, params in wb.all_method_params().items():
        for p in params:
            with gr.Blocks():
                c = make_control(p, slider_cap=64)
            if isinstance(c, (gr.Slider, gr.Number)) and p["minimum"] is not None:
                assert c.minimum == p["minimum"], (section, p["name"])
                assert p["maximum"] is None or c.maximum <= p["maximum"]
            if p.get("choices"):
                assert isinstance(c, gr.Dropdown)
            value = coerce(p, p["default"])
            assert type(value) is type(p["default"])
    assert coerce({"type": "int", "default": 3}, 4.0) == 4


def test_presets_cover_every_kind():
    for kind in wb.JOB_KINDS:
        for name in wb.PRESET_NAMES:
            values = wb.preset(kind, name)
            assert set(values) == {p["name"] for p in wb.job_params(kind)}
    assert wb.preset("rg-lcd", "1-minute demo")["reward"] != "none"
    assert wb.preset("efficientdm", "1-minute demo")["minutes"] <= 1.0
    with pytest.raises(ValueError, match="preset"):
        wb.preset("lcd", "nope")


def test_jobs_start_cancel_and_restart(tmp_path):
    jobs = wb.JobManager(tmp_path)
    with pytest.raises(ValueError, match="weight_bits"):
        jobs.start("efficientdm", "tiny-arch", {"weight_bits": 1})
    with pytest.raises(ValueError, match="unknown model"):
        jobs.start("lcd", "not-a-model", {})
    job_id = jobs.start("efficientdm", "tiny-arch", wb.preset("efficientdm", "1-minute demo"))
    assert jobs.get(job_id)["status"] in ("starting", "running")
    state = jobs.cancel(job_id)
    if state["status"] not in wb.TERMINAL:
        state = jobs.wait(job_id, 50)
    assert state["status"] == "cancelled"
    assert jobs.checkpoints() == []
    from backend.runs.store import Store

    with Store(tmp_path) as store:  # the job's state is in the results store too
        assert store.job(job_id)["status"] == "cancelled"
    # a finished job and a job whose worker died, as a restarted UI finds them
    for name, status in (("20260101-000000-done", "done"), ("20260101-000001-dead", "running")):
        d = tmp_path / "jobs" / name
        (d / "checkpoint").mkdir(parents=True)
        (d / "job.json").write_text(json.dumps({
            "id": name, "kind": "efficientdm", "model": "tiny-arch", "settings": {"minutes": 1}, "status": status,
            "created": time.time(), "checkpoint": str(d / "checkpoint"), "section": "quant", "pid": 999999999}))
        (d / "progress.jsonl").write_text(json.dumps({"step": 3, "loss": 0.5}) + "\n")
    restarted = wb.JobManager(tmp_path)
    by_id = {j["id"]: j for j in restarted.jobs()}
    assert by_id["20260101-000001-dead"]["status"] == "interrupted"
    assert by_id["20260101-000000-done"]["loss"] == 0.5
    ckpts = restarted.checkpoints("tiny-arch", "quant")
    assert [c["path"] for c in ckpts] == [str(tmp_path / "jobs" / "20260101-000000-done" / "checkpoint")]
    assert restarted.checkpoints("shapes") == []
