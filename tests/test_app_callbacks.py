"""The workbench's backend services (backend.runs.compare / curves / jobs / knobs / record) and the app's pure
helpers (app.controls, app.images, app.callbacks): tiny-arch, few steps."""

import json
import math
import threading
import time
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from backend.methods.quant.kernels import unavailable_reason
from backend.reports import curves, record
from backend.runs import compare as cmp
from backend.runs import knobs
from backend.runs.jobs import ACTIVE, JobLimits, JobService
from backend.runs.store import Store

PROMPT = "a small red circle in the center"
BASE = {"steps": 4}
DC = {"steps": 4, "deepcache": {"interval": 2}}


def test_compare_baseline_and_deepcache_same_seed():
    rows = cmp.compare(PROMPT, 3, [BASE, DC], model="tiny-arch")
    assert [r["name"] for r in rows] == ["baseline · 4 steps", "DeepCache N=2 · 4 steps"]  # from the settings
    base, dc = rows
    assert base["image"].shape == dc["image"].shape and base["image"].dtype.name == "uint8"
    assert base["speedup"] == 1.0 and base["psnr_vs_baseline"] is None
    assert dc["latency_s"] > 0 and dc["psnr_vs_baseline"] is not None
    assert dc["unet_evals"] == base["unet_evals"] == 8  # 4 steps × CFG
    assert dc["full_steps"] + dc["cached_steps"] == 4 and dc["cached_steps"] > 0
    again = cmp.compare(PROMPT, 3, [BASE], model="tiny-arch")  # cached pipeline, same seed → same image
    assert (again[0]["image"] == base["image"]).all()
    line = cmp.metrics_line(dc)
    assert "PSNR" in line and "U-Net evals" in line and "×" in line
    safe = cmp.jsonable_rows(rows)  # no images, strict JSON (inf → "inf")
    assert json.loads(json.dumps(safe, allow_nan=False)) == safe and all("image" not in r for r in safe)
    assert cmp.jsonable_rows([{"psnr_vs_baseline": math.inf, "image": 0}]) == [{"psnr_vs_baseline": "inf"}]
    timing = cmp.time_columns(PROMPT, 3, [BASE, DC], model="tiny-arch", rounds=2)
    assert [t["repeats"] for t in timing] == [2, 2] and timing[1]["speedup_ci"] is not None
    timed = cmp.metrics_line({**dc, "timing": timing[1]})
    assert "× [" in timed and "(2 rounds)" in timed


@pytest.mark.skipif(bool(unavailable_reason("cpu")), reason="no oneDNN int8 kernels here")
def test_compare_says_which_kernels_ran():
    quant = {"steps": 3, "quant": {"kernels": "real", "calib_prompts": 1, "calib_steps": 2, "calib_samples": 2}}
    rows = cmp.compare(PROMPT, 3, [{"steps": 3}, quant], model="tiny-arch")
    assert "kernels" not in rows[0]
    assert rows[1]["kernels"].startswith("real int8 kernels") and rows[1]["kernels"] in cmp.metrics_line(rows[1])


@pytest.mark.parametrize("prompt,variants,model,needle", [
    ("  ", [BASE], "tiny-arch", "prompt"),
    (PROMPT, [BASE], "no-such/model-offline", "no-such/model-offline"),
    (PROMPT, [BASE] * 6, "tiny-arch", "up to 4"),
])
def test_compare_bad_request_names_the_value(prompt, variants, model, needle):
    with pytest.raises(ValueError, match=needle.replace("/", ".")):
        cmp.compare(prompt, 0, variants, model=model)


def test_a_bad_column_errs_in_its_column_only():
    bad_interval = {"steps": 4, "deepcache": {"interval": 0}}
    bad_ckpt = {"steps": 4, "consistency": {"checkpoint": "/nonexistent"}}
    rows = cmp.compare(PROMPT, 0, [BASE, bad_interval, DC, bad_ckpt], model="tiny-arch")
    assert "deepcache.interval" in rows[1]["error"] and "nonexistent" in rows[3]["error"]
    assert "error" not in rows[0] and "error" not in rows[2] and rows[2]["psnr_vs_baseline"] is not None
    assert cmp.metrics_line(rows[1]).startswith("Error:")


def test_limits_refuse_huge_requests_before_work():
    limits = cmp.Limits(max_steps=50, max_pixels=128 * 128)
    rows = cmp.compare(PROMPT, 0, [BASE, {"steps": 500}, {"steps": 4, "height": 1024}], model="tiny-arch",
                       limits=limits)
    assert "--max-steps" in rows[1]["error"] and "--max-pixels" in rows[2]["error"]


def test_cancel_inside_a_step_and_the_time_limit():
    cancel = threading.Event()
    seen = []

    def on_step(done, total, name):
        seen.append(done)
        if done == 2:
            cancel.set()

    with pytest.raises(cmp.GenerationCancelled):
        cmp.compare(PROMPT, 0, [{"steps": 20}, DC], model="tiny-arch", on_step=on_step, cancel=cancel)
    assert seen == [1, 2]  # stopped inside step 3, before its end
    assert cmp.DEVICE_LOCK.acquire(blocking=False)  # the device is free again
    cmp.DEVICE_LOCK.release()
    with pytest.raises(cmp.GenerationCancelled, match="time limit"):
        cmp.compare(PROMPT, 0, [{"steps": 900}], model="tiny-arch", limits=cmp.Limits(time_limit_s=0.3))
    assert cmp.compare(PROMPT, 0, [BASE], model="tiny-arch")[0]["image"] is not None  # hooks are gone


def test_curves_run_through_the_sweep_engine(tmp_path):
    assert curves.sweep_values(1, 8, 3) == [1, 4, 7]
    with pytest.raises(ValueError, match="below its start"):
        curves.sweep_values(5, 1, 1)
    grid = {"deepcache.interval": [3], "deepcache.branch": [0, 1]}
    run_id = curves.run_curves(tmp_path, {"model": "tiny-arch", "steps": 4}, grid, [PROMPT], 0)
    df = curves.curve_points(tmp_path, run_id, list(grid))
    assert len(df) == 3 and df["is_baseline"].sum() == 1
    assert sorted(df.loc[~df["is_baseline"], "deepcache.branch"]) == [0, 1]
    fastest = df.loc[~df["is_baseline"], "latency_s"].min()
    assert curves.front(df, "speedup")["latency_s"].min() == fastest  # the fastest point is always on the front
    base, image = curves.point_images(tmp_path, run_id, 1)
    assert base.shape == image.shape and base.dtype == np.uint8
    from app.curves import figure

    fig = figure(df, list(grid), "speedup")  # tiny-arch has random weights: no quality metrics
    names = [t.name for t in fig.data]
    assert "deepcache.branch=0" in names and "deepcache.branch=1" in names and "baseline" in names
    hover = next(t for t in fig.data if t.name == "deepcache.branch=1").hovertext[0]
    assert "interval=3 branch=1" in hover and "latency_s" in hover
    for trace in fig.data[:3]:  # every point with its 95% intervals, joined along the latency axis
        assert len(trace.error_x.array) == len(trace.x) and len(trace.error_y.array) == len(trace.y)
        assert list(trace.x) == sorted(trace.x)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(cmp.GenerationCancelled):
        curves.run_curves(tmp_path, {"model": "tiny-arch", "steps": 4}, {"steps": [2, 3]}, [PROMPT], 0, cancel=cancel)


def test_a_cancelled_sweep_says_cancelled_not_error(tmp_path):
    from app.callbacks import Callbacks

    cb = Callbacks("tiny-arch", tmp_path)
    cb.cancels.begin(None).set()  # what Cancel does while the sweep runs
    cb.cancels.begin = lambda request: cb.cancels._flags["default"]
    out = cb.curves.run(PROMPT, 0, "tiny-arch", json.dumps([BASE]), "variant", "steps", 2, 3, 1, "(none)", None, "",
                        "this prompt + single set", 2, "speedup", progress=lambda *a, **k: None)
    assert out[3].startswith("**Cancelled**") and "resume" in out[3]


def test_plots_draw_the_intervals_of_the_tables():
    import pandas as pd

    from backend.reports import plots

    df = pd.DataFrame({"variant": ["base", "a", "b"], "is_baseline": [True, False, False],
                       "latency_s": [2.0, 1.0, 1.5], "latency_ci.lo": [1.9, 0.9, 1.4], "latency_ci.hi": [2.2, 1.1, 1.5],
                       "speedup": [1.0, 2.0, 1.3], "speedup_ci.lo": [1.0, 1.8, 1.2], "speedup_ci.hi": [1.0, 2.3, 1.4],
                       "prompt_accuracy": [0.9, 0.8, 0.85], "prompt_accuracy_delta.ci.lo": [0.0, -0.2, -0.1],
                       "prompt_accuracy_delta.ci.hi": [0.0, 0.0, 0.05], "family": "base", "line": "", "knob": 1.0})
    bars = plots.fig_bars(df, "speedup").data[0].error_y
    assert list(bars.array) == pytest.approx([0.0, 0.3, 0.1]) and list(bars.arrayminus) == pytest.approx([0, 0.2, 0.1])
    acc = plots.error_bars(df, "prompt_accuracy")  # paired: the baseline plus the delta's interval
    assert acc["array"] == pytest.approx([0.0, 0.1, 0.1]) and acc["arrayminus"] == pytest.approx([0.0, 0.1, 0.05])
    pareto = plots.fig_pareto(df, "prompt_accuracy").data[0]
    assert pareto.error_x.array is not None and pareto.error_y.array is not None
    assert plots.error_bars(df, "kid_shapes") is None  # no interval in the frame: no bars, not zero bars


def test_report_of_a_comparison_has_unique_names_and_no_placeholders(tmp_path):
    rows = cmp.compare(PROMPT, 0, [BASE, DC], model="tiny-arch")
    run_id = record.save_comparison(tmp_path, rows, PROMPT, 0)
    first = record.export(tmp_path, run_id, "playground", tmp_path)
    time.sleep(1.1)
    second = record.export(tmp_path, run_id, "playground", tmp_path)
    assert first.html != second.html and first.zip.name != second.zip.name
    text = first.html.read_text()
    assert "DeepCache N=2 · 4 steps" in text and "?" not in text.split("latency_s is")[1][:900]
    names = zipfile.ZipFile(first.zip).namelist()
    assert {"metrics.json", "metrics.csv", "config.json"} <= set(names)
    assert sum(n.startswith("images/") for n in names) == 2


def test_images_upscale_difference_and_grid(tmp_path):
    from PIL import Image

    from app.images import before_after_html, difference, grid_png, upscale

    img = np.zeros((64, 64, 3), np.uint8)
    assert upscale(img).shape == (256, 256, 3) and upscale(np.zeros((300, 300, 3), np.uint8)).shape[0] == 300
    other = img.copy()
    other[0, 0] = 10
    assert difference(img, other)[0, 0, 0] == 40 and difference(img, other)[1, 1, 0] == 0
    page = before_after_html(img, other, "a", "b", show_difference=True)
    assert page.count('class="ba-box"') == 2 and "ba-range" in page
    out = grid_png([{"name": "baseline", "image": img, "caption": "1.0 s"},
                    {"name": "off", "image": None, "caption": "Error: x"}], PROMPT, 3, tmp_path / "g.png")
    w, h = Image.open(out).size
    assert w > 2 * 256 and h > 256


def test_controls_follow_the_declarations():
    import gradio as gr

    from app.controls import coerce, make_control

    for section, params in knobs.all_method_params().items():
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
    for kind in knobs.finetune_kinds():
        for name in knobs.PRESET_NAMES:
            values = knobs.preset(kind, name)
            assert set(values) == {p["name"] for p in knobs.job_params(kind)}
    assert knobs.preset("rg-lcd", "1-minute demo")["reward"] != "none"
    assert knobs.preset("efficientdm", "1-minute demo")["minutes"] <= 1.0
    with pytest.raises(ValueError, match="preset"):
        knobs.preset("lcd", "nope")


def test_checkpoint_sets_and_locks_the_controls(tmp_path):
    from app.callbacks import Callbacks

    cb = Callbacks("tiny-arch", tmp_path)
    assets = {c["section"]: c["path"] for c in knobs.asset_checkpoints("shapes")}
    if "quant" in assets:
        implied = knobs.checkpoint_implies("quant", assets["quant"])
        assert implied["quant"]["weight_bits"] == 4 and implied["quant"]["act_bits"] == 4
        on, method, wbits, abits, scheduler, steps, guidance = cb.checkpoint_chosen("quant", assets["quant"])
        assert on["value"] is True and wbits["value"] == 4 and wbits["interactive"] is False
        assert method["value"] == "efficientdm"
    if "consistency" in assets:
        on, scheduler, steps, guidance = cb.checkpoint_chosen("consistency", assets["consistency"])
        # steps: the student's recommended_steps (assets/rg-lcm-lora/COMMAND.md); guidance: its distilled one (no CFG)
        assert scheduler["value"] == "lcm" and scheduler["interactive"] is False and steps["value"] == 2
        assert guidance["value"] == 1.0
    on, method, wbits, abits, scheduler, steps, guidance = cb.checkpoint_chosen("quant", "")  # cleared: unlocked
    assert wbits["interactive"] is True and "value" not in wbits
    assert knobs.asset_checkpoints("tiny-arch") == []


def test_a_checkpoint_box_follows_the_model_to_its_shipped_checkpoint(tmp_path):
    """Shipped checkpoints belong to the model their metadata names; on a model change a box that held one gets the
    new model's checkpoint of its method, or is cleared; an empty box stays empty."""
    from app.callbacks import N_COLUMNS, Callbacks

    shipped = {(c["model"], c["section"]): c["path"] for c in knobs.asset_checkpoints(None)}
    if ("shapes-dit", "quant") not in shipped or ("shapes", "quant") not in shipped:
        pytest.skip("the shipped EfficientDM checkpoints are not in assets/")
    assert {c["model"] for c in knobs.asset_checkpoints("shapes-dit")} == {"shapes-dit"}
    cb = Callbacks("tiny-arch", tmp_path)
    boxes = [s for _ in range(1, N_COLUMNS) for s, ps in cb.columns_layout()
             if any(p["name"] == "checkpoint" for p in ps)]
    held = [shipped[("shapes", "quant")] if s == "quant" else "" for s in boxes]
    to_dit = cb.checkpoint_updates("shapes-dit", held)
    assert [u["value"] for u in to_dit] == [shipped[("shapes-dit", "quant")] if s == "quant" else "" for s in boxes]
    assert all(u["value"] == "" for u in cb.checkpoint_updates("tiny-sd3", held))
    assert all(u["value"] == "" for u in cb.checkpoint_updates("shapes-dit", [""] * len(boxes)))


def test_columns_map_to_their_slots(tmp_path):
    from app.callbacks import N_COLUMNS, Callbacks

    cb = Callbacks("tiny-arch", tmp_path)
    columns = [BASE, None, {"name": "third", **DC}, None, {"name": "bad", "steps": 4, "deepcache": {"interval": 0}}]
    outs = list(cb.generate(PROMPT, 0, "tiny-arch", json.dumps(columns), progress=lambda *a, **k: None))
    first = outs[0]  # the baseline is shown before the other columns are made
    assert first[0]["value"] is not None and first[2] == gr.skip() and first[2 * N_COLUMNS + 1] == "1 of 3 images…"
    out = outs[-1]
    images, captions, by_col = out[:N_COLUMNS], out[N_COLUMNS:2 * N_COLUMNS], out[-1]
    assert images[1]["value"] is None and captions[1] == "" and by_col[1] is None
    assert images[2]["label"] == "third: DeepCache N=2 · 4 steps" and images[2]["value"].shape[0] >= 256
    assert captions[4].startswith("**bad** — Error:") and images[4]["value"] is None
    assert out[2 * N_COLUMNS + 1].startswith("Done: 2 images")


def test_column_labels_follow_the_settings():
    """A column named after its settings and then changed says what it runs: the name is only a prefix."""
    from backend.variant import Variant

    def v(**kw):
        return Variant.from_dict({"model": "tiny-arch", "steps": 4, **kw})

    labels = cmp.column_labels([v(), v(name="DeepCache N=3", deepcache={"interval": 5}), v(deepcache={"interval": 5}),
                                v(steps=8, scheduler="ddim", guidance=2.0, quant={"weight_bits": 4, "act_bits": 8})])
    assert labels == ["baseline · 4 steps", "DeepCache N=3: DeepCache N=5 · 4 steps", "DeepCache N=5 · 4 steps",
                      "PTQ W4A8 · ddim, 8 steps, CFG 2"]
    assert cmp.column_labels([v(), v(), {"name": "bad"}]) == ["baseline · 4 steps", "baseline · 4 steps (2)", "bad"]


@pytest.mark.parametrize("seed", [-1, 1.5, 2 ** 53, 2 ** 53 + 1, float("nan"), "3", True])
def test_seed_out_of_range_is_refused_not_rounded(seed):
    with pytest.raises(ValueError, match="seed"):
        cmp.check_seed(seed)
    assert cmp.check_seed(2 ** 53 - 1) == 2 ** 53 - 1 and cmp.check_seed(7.0) == 7


@pytest.mark.parametrize("seed, variants, message", [
    (-1, [BASE], "seed -1 is out of range; allowed: 0 to 9007199254740991"),
    (float(2 ** 53), [BASE], "seed 9007199254740992 is out of range"),
    (0, "[" * 100_000 + "]" * 100_000, "variants: JSON nested too deeply"),
])
def test_bad_playground_input_is_one_status_line(tmp_path, seed, variants, message):
    from app.callbacks import N_COLUMNS, Callbacks

    cb = Callbacks("tiny-arch", tmp_path)
    text = variants if isinstance(variants, str) else json.dumps(variants)
    (out,) = list(cb.generate(PROMPT, seed, "tiny-arch", text, progress=lambda *a, **k: None))
    assert message in out[2 * N_COLUMNS + 1] and all(o == gr.skip() for o in out[:2 * N_COLUMNS])


def test_steps_out_of_range_are_refused_in_their_column(tmp_path):
    from app.callbacks import N_COLUMNS, Callbacks

    cb = Callbacks("tiny-arch", tmp_path)
    columns = [BASE, {"steps": 0}, {"steps": 100000}, {"steps": 2.5}]
    out = list(cb.generate(PROMPT, 0, "tiny-arch", json.dumps(columns), progress=lambda *a, **k: None))[-1]
    captions = out[N_COLUMNS:2 * N_COLUMNS]
    assert "steps: 0 is not allowed; allowed: a whole number from 1 to 1000" in captions[1]
    assert "steps: 100000 is not allowed" in captions[2] and "steps: 2.5 is not allowed" in captions[3]


def _service(tmp_path, **kw) -> JobService:
    return JobService(tmp_path, JobLimits(**{"max_running": 1, "max_minutes": 5.0, **kw}))


def test_job_limits(tmp_path):
    jobs = _service(tmp_path)
    with pytest.raises(ValueError, match="weight_bits"):
        jobs.start("efficientdm", "tiny-arch", {"weight_bits": 1})
    with pytest.raises(ValueError, match="unknown model"):
        jobs.start("lcd", "not-a-model", {"minutes": 1})
    with pytest.raises(ValueError, match="minutes"):
        jobs.start("efficientdm", "tiny-arch", {"minutes": 100000})
    with pytest.raises(ValueError, match="outside the folders"):
        jobs.start("lcd", "tiny-arch", {"minutes": 1, "data": "/etc"})
    with pytest.raises(ValueError, match="outside the folders"):
        jobs.start("lcd", "tiny-arch", {"minutes": 1, "data": "teacher:/etc/hostname"})


def test_a_just_started_job_never_reads_as_ended(tmp_path):
    """The race of issue 16: polls from another thread while the worker starts must not see it as dead."""
    jobs = _service(tmp_path)
    seen, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            for j in jobs.jobs():
                seen.append((j["status"], j["error"]))

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        job_id = jobs.start("efficientdm", "tiny-arch", knobs.preset("efficientdm", "1-minute demo"))
        first = jobs.get(job_id)
        assert first["status"] in ACTIVE and first["phase"] and first["error"] is None
        with pytest.raises(ValueError, match="at a time"):  # the cap on running jobs
            jobs.start("efficientdm", "tiny-arch", knobs.preset("efficientdm", "1-minute demo"))
        state = jobs.cancel(job_id)
        state = jobs.wait(job_id, 60)
    finally:
        stop.set()
        poller.join()
    assert state["status"] == "cancelled" and state["error"] is None
    assert all(error is None for _, error in seen) and all(s in (*ACTIVE, "cancelled") for s, _ in seen)
    with Store(tmp_path) as store:  # one job store: the results store
        assert store.job(job_id)["status"] == "cancelled"
    assert not (tmp_path / "jobs" / job_id / "job.json").exists()


def test_a_dead_worker_and_resume(tmp_path):
    jobs = _service(tmp_path)
    job_id = "20260101-000001-dead"
    with Store(tmp_path) as store:
        store.create_job("lcd", {"model": "tiny-arch", "settings": {"minutes": 0.05, "max_steps": 2},
                                 "section": "consistency"},
                         out_dir=str(tmp_path / "jobs" / job_id / "checkpoint"), job_id=job_id, status="running")
        store.update_job(job_id, pid=999999999)
    (tmp_path / "jobs" / job_id).mkdir(parents=True)
    job = jobs.get(job_id)
    assert job["status"] == "failed" and "worker" in job["error"]
    assert not jobs.resumable(job)
    with pytest.raises(ValueError, match="cannot be resumed"):
        jobs.resume(job_id)
    (tmp_path / "jobs" / job_id / "checkpoint.partial").mkdir()
    assert jobs.resumable(jobs.get(job_id))
    resumed = jobs.resume(job_id)
    assert resumed["status"] in ACTIVE and resumed["error"] is None
    assert jobs.wait(job_id, 90)["status"] in ("done", "failed")


def _fragment(folder, name: str, model: str, rows: list[dict], date: str, commit: str) -> None:
    env = {"cpu": "x86_64", "cpu_threads": 1, "cpu_isa": "AVX512", "gpu": None, "git_commit": commit}
    (folder / name).write_text(json.dumps({"bench": "quant", "model": model, "device": "cpu-avx512", "date": date,
                                           "command": f"python -m backend bench quant {name}", "environment": env,
                                           "rows": rows}))


def test_quant_maps_show_the_newest_fragments_or_the_command(tmp_path, monkeypatch):
    from app.curves import CurvesCallbacks
    from backend.bench import docs

    folder = tmp_path / "quant"
    folder.mkdir()
    monkeypatch.setattr(docs, "FRAGMENTS", tmp_path)
    ptq = [{"model": "shapes (grid)", "method": "ptq", "policy": policy, "weight_bits": w, "act_bits": a,
            "prompt_accuracy_delta": {"delta": -0.01 * w * a}, "ptq_breaks": w == 2}
           for policy in ("paper", "all-same") for w in (2, 4) for a in (4, 8)]
    _fragment(folder, "shapes-grid--old.json", "shapes (grid)", ptq[:2], "2026-01-01", "old1234")
    _fragment(folder, "shapes-grid--new.json", "shapes (grid)", ptq, "2026-12-02", "new5678")
    layers = [{"layer": f"down_blocks.{i}.conv", "role": "first_last" if i == 0 else "body", "params": 100 * i,
               "eps_rel_mse": 0.1 * i} for i in range(5)]
    _fragment(folder, "shapes-sensitivity-w4a4--x.json", "shapes (sensitivity W4A4)", layers, "2026-12-01", "sens000")
    _fragment(folder, "other-grid--x.json", "other (grid)", ptq, "2026-12-03", "other00")

    grid, grid_caption, sens, sens_caption = CurvesCallbacks.quant_maps("shapes")
    assert grid["visible"] and sens["visible"]
    heatmaps = grid["value"].data
    assert [t.type for t in heatmaps] == ["heatmap", "heatmap"]  # one panel per layer policy: the newest fragment
    assert heatmaps[0].z[0][0] == pytest.approx(8.0) and heatmaps[0].text[0][0] == "8.0*"  # W2A4: drop in points
    assert "bench quant shapes-grid--new.json" in grid_caption and "2026-12-02" in grid_caption
    assert "CPU ISA AVX512" in grid_caption and "commit new5678" in grid_caption and "\n" not in grid_caption
    bars = sens["value"]
    assert [(t.type, t.name) for t in bars.data] == [("bar", "body"), ("bar", "first_last")]  # one per layer role
    assert list(bars.layout.yaxis.categoryarray) == [f"down_blocks.{i}.conv" for i in range(5)]  # top: the most
    assert "commit sens000" in sens_caption

    grid, grid_caption, sens, sens_caption = CurvesCallbacks.quant_maps("tiny-arch")
    assert not grid["visible"] and not sens["visible"]
    assert "`python -m backend bench quant --grid --set hard --n 100 --model tiny-arch`" in grid_caption
    assert "`python -m backend bench quant --sensitivity --bits W4A4 --model tiny-arch`" in sens_caption


class _FakeWatch:
    """A QualityWatch's interface: the PTQ start judged at construction, one point per call, a warning when the
    accuracy falls 10 points below the start."""

    def __init__(self, accuracies: list[float]):
        self.accuracies = list(accuracies)
        self.curve = [{"minutes": 0.0, "iters": 0, "loss": None, "prompt_accuracy": self.accuracies.pop(0),
                       "fp_prompt_accuracy": 0.9}]
        self.warnings: list[str] = []

    def __call__(self, student, train_s: float, iters: int) -> bool:
        accuracy = self.accuracies.pop(0)
        self.curve.append({"minutes": round(train_s / 60, 3), "iters": iters, "loss": 0.1,
                           "prompt_accuracy": accuracy, "fp_prompt_accuracy": 0.9})
        if accuracy <= self.curve[0]["prompt_accuracy"] - 0.1:
            self.warnings.append(f"warning: judged quality fell while the loss fell: {accuracy:.2f}")
        return False

    def observe(self, fields: dict) -> None:
        self.losses = [*getattr(self, "losses", []), fields["loss"]]


def test_a_watched_job_records_accuracy_points_and_its_warning(tmp_path):
    """The worker's quality-watch hook writes each point as a progress row and the warning as the job's; the
    service reads them back after a restart and the Fine-tune tab plots them with the FP and PTQ references."""
    from app.finetune import FinetuneCallbacks
    from backend.runs.job_worker import JobLog, WatchRecorder

    job_id = "20260101-000002-watch"
    (tmp_path / "jobs" / job_id).mkdir(parents=True)
    with Store(tmp_path) as store:
        store.create_job("efficientdm", {"model": "shapes", "settings": {"minutes": 3.0}, "section": "quant"},
                         out_dir=str(tmp_path / "jobs" / job_id / "checkpoint"), job_id=job_id, status="running")
        with (tmp_path / "jobs" / job_id / "progress.jsonl").open("a") as file:
            log = JobLog(store, job_id, file)
            recorder = WatchRecorder(lambda: _FakeWatch([0.8, 0.75, 0.6]), log)
            for step in (1, 2):
                log.report({"step": step, "loss": 0.2 / step, "train_s": 60.0 * step})
            assert recorder(None, 120.0, 2) is False
            recorder.final(None, 120.0, 2)  # judged at its last iteration already: no second point
            recorder.final(None, 150.0, 3)
        store.update_job(job_id, status="done", progress={**log.latest, "phase": "done"})

    fresh = JobService(tmp_path)  # a restarted UI
    points = fresh.quality_watch(job_id)
    assert [(p["iters"], p["prompt_accuracy"]) for p in points] == [(0, 0.8), (2, 0.75), (3, 0.6)]
    assert [r["step"] for r in fresh.progress(job_id)] == [1, 2]  # the loss curve has no watch rows
    job = fresh.get(job_id)
    assert job["warning"] == "warning: judged quality fell while the loss fell: 0.60"

    loss, accuracy, line = FinetuneCallbacks(fresh).view(job_id)
    assert loss["visible"] and accuracy["visible"]
    traces = {t.name: t for t in accuracy["value"].data}
    assert list(traces["fine-tune"].y) == [0.8, 0.75, 0.6] and list(traces["fine-tune"].x) == [0.0, 2.0, 2.5]
    assert list(traces["FP model"].y) == [0.9, 0.9] and list(traces["PTQ start"].y) == [0.8, 0.8]
    assert list(traces["PTQ start"].x) == [0.0, 3.0]  # the references span the job's budget
    assert "Quality watch warning: judged quality fell" in line and "\n\n" in line

    other = "20260101-000003-nowatch"
    (tmp_path / "jobs" / other).mkdir()
    with Store(tmp_path) as store:
        store.create_job("efficientdm", {"model": "tiny-arch", "settings": {"minutes": 1.0}, "section": "quant"},
                         out_dir=str(tmp_path / "jobs" / other / "checkpoint"), job_id=other, status="done")
    loss, accuracy, line = FinetuneCallbacks(fresh).view(other)
    assert not loss["visible"] and not accuracy["visible"] and "warning" not in line.lower()


def test_a_workbench_efficientdm_fine_tune_runs_the_watch(tmp_path, monkeypatch):
    """The worker's EfficientDM fine-tune builds the watch the CLI builds (every 2 min on 16 hard prompts from the
    PTQ start) after training has started (its references take a minute), feeds it the loss after the settle
    iterations and the latest, and judges the finished student (a fake watch on tiny-arch)."""
    from backend.core import JobControl
    from backend.methods.quant import watch
    from backend.models import load_pipeline
    from backend.runs import job_worker

    made, steps = {}, []

    def make_watch(pipe, sample, every_minutes, n, start=None, settle_iters=1):
        made.update(every=every_minutes, n=n, bits=(start.weight_bits, start.act_bits), settle=settle_iters,
                    after_step=len(steps))
        made["watch"] = _FakeWatch([0.5, 0.7])
        made["watch"].every_s = every_minutes * 60
        return made["watch"]

    monkeypatch.setattr(watch, "make_watch", make_watch)
    job_id = "20260101-000004-real"
    (tmp_path / "jobs" / job_id).mkdir(parents=True)
    settings = {"weight_bits": 4, "act_bits": 8, "minutes": 1.0, "max_iters": 3, "train_steps": 2, "batch_size": 1,
                "lora_rank": 2}
    with Store(tmp_path) as store:
        store.create_job("efficientdm", {"model": "tiny-arch", "settings": settings, "section": "quant"},
                         out_dir=str(tmp_path / "jobs" / job_id / "checkpoint"), job_id=job_id, status="running")
        with (tmp_path / "jobs" / job_id / "progress.jsonl").open("a") as file:
            log = job_worker.JobLog(store, job_id, file)
            summary = job_worker.run_finetune("efficientdm", load_pipeline("tiny-arch"), settings,
                                              tmp_path / "jobs" / job_id / "checkpoint",
                                              JobControl(on_progress=lambda f: (steps.append(f), log.report(f))), log)
    assert summary["status"] == "done" and summary["iters"] == 3
    assert {k: made[k] for k in ("every", "n", "bits", "settle")} == {
        "every": watch.JOB_WATCH_EVERY_MIN, "n": watch.JOB_WATCH_N, "bits": (4, 8), "settle": 2}
    assert made["after_step"] == 3  # training did not wait for the watch's references
    assert made["watch"].losses == [steps[1]["loss"], steps[2]["loss"]]  # past the settle iterations; the latest
    points = JobService(tmp_path).quality_watch(job_id)
    assert [(p["iters"], p["prompt_accuracy"]) for p in points] == [(0, 0.5), (3, 0.7)]
    assert points[1]["minutes"] == round(summary["elapsed_s"] / 60, 3)  # training time, not the watch's


def test_cancel_is_honoured_inside_the_quality_watch(tmp_path, monkeypatch):
    """A cancel while the watch judges (a long generation here) stops the job within a layer, not after the
    watch's minute; the job ends "cancelled" with no error."""
    from backend.methods.quant import watch
    from backend.runs import job_worker
    from backend.sampling import generate
    from backend.variant import Variant

    job_id = "20260101-000005-cancel"
    flag = job_worker.FileFlag(tmp_path / "jobs" / job_id / "cancel")

    def make_watch(pipe, *args, **kwargs):
        threading.Timer(0.5, flag.set).start()
        generate(pipe, Variant.from_dict({"model": "tiny-arch", "steps": 900}), [PROMPT], [0])  # a minute uncancelled
        raise AssertionError("the generation was not stopped")

    monkeypatch.setattr(watch, "make_watch", make_watch)
    (tmp_path / "jobs" / job_id).mkdir(parents=True)
    settings = {"weight_bits": 4, "act_bits": 8, "minutes": 1.0, "max_iters": 1, "train_steps": 2, "batch_size": 1,
                "lora_rank": 2}
    with Store(tmp_path) as store:
        store.create_job("efficientdm", {"model": "tiny-arch", "settings": settings, "section": "quant"},
                         out_dir=str(tmp_path / "jobs" / job_id / "checkpoint"), job_id=job_id, status="queued")
    assert job_worker.run(tmp_path, job_id) == 1
    job = JobService(tmp_path).get(job_id)
    assert job["status"] == "cancelled" and job["error"] is None and job["cancel_requested"]


def test_finished_workers_are_reaped(tmp_path):
    jobs = _service(tmp_path)
    job_id = jobs.start("efficientdm", "tiny-arch", {"minutes": 0.05, "max_iters": 1, "train_steps": 2,
                                                     "batch_size": 1, "lora_rank": 2})
    pid = jobs.get(job_id)["pid"]
    assert jobs.wait(job_id, 120)["status"] == "done"
    deadline = time.monotonic() + 60  # the worker exits soon after writing "done"; the service reaps it
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        jobs.jobs()
        time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists()  # a zombie would stay listed until its parent exits


def test_a_method_without_its_own_label_is_labelled_by_its_changed_knobs():
    """A new method's column is labelled from its declared knobs with no UI code (MethodConfig.label)."""
    import dataclasses

    from backend.methods.params import MethodConfig, param

    @dataclasses.dataclass
    class Toy(MethodConfig):
        section = "toy"
        ratio: float = param(0.5, "merge ratio")
        on_time: bool = param(True, "a flag")
        hidden: int = param(1, "not in forms", ui=False)

    assert Toy().label() == "toy"
    assert Toy(ratio=0.3, on_time=False, hidden=2).label() == "toy ratio=0.3 on_time=False"


def test_a_model_change_locks_what_its_family_refuses_and_the_columns_still_generate(tmp_path):
    """tiny-sd3: ToMe and the schedule peers locked with the reason, DeepCache's U-Net branch hidden and its DiT
    k / m shown, FirstBlockCache left out of the cache kinds; back on a U-Net model everything is restored."""
    from app.callbacks import N_COLUMNS, Callbacks

    cb = Callbacks("tiny-arch", tmp_path)
    layout = cb.columns_layout()
    per_column = sum(1 + len(params) for _, params in layout)

    def column_one(model: str) -> dict:
        outs = cb.model_changed(model, *["default"] * N_COLUMNS)
        n_ckpt = len(cb.checkpoint_updates(model))
        assert all(u["value"] == "" for u in outs[2 * N_COLUMNS:2 * N_COLUMNS + n_ckpt])  # they were shapes'
        family = outs[2 * N_COLUMNS + n_ckpt:-1]
        assert len(family) == (N_COLUMNS - 1) * per_column and "ready" in outs[-1]
        out, it = {}, iter(family[:per_column])
        for section, params in layout:
            out[section] = next(it)
            out.update({f"{section}.{p['name']}": next(it) for p in params})
        return out

    sd3 = column_one("tiny-sd3")
    assert sd3["tome"]["interactive"] is False and sd3["tome"]["value"] is False
    assert "family 'sd3'" in sd3["tome"]["info"] and sd3["deepcache"]["interactive"] is True
    assert sd3["deepcache.branch"]["visible"] is False and sd3["deepcache.first_blocks"]["visible"] is True
    assert sd3["diffusers_cache.kind"]["choices"] == ["pab", "faster", "taylorseer", "magcache"]
    assert "not fbc on sd3" in sd3["diffusers_cache.kind"]["info"]
    assert sd3["deepcache.interval"] == gr.skip()
    unet = column_one("tiny-arch")
    assert unet["tome"]["interactive"] is True and "value" not in unet["tome"]
    assert unet["deepcache.branch"]["visible"] is True and unet["deepcache.first_blocks"]["visible"] is False
    assert unet["diffusers_cache.kind"]["choices"] == ["pab"] and unet["diffusers_cache.kind"]["value"] == "pab"
    # a DiT column as the form collects it (every knob, the hidden U-Net ones at their defaults) generates
    values = []
    for col in range(N_COLUMNS):
        values += [col < 2, "", "default", 2, 5.0]
        if col:
            for section, params in layout:
                values += [section == "deepcache"] + [p["default"] for p in params]
    columns = json.loads(cb.collect_variants(*values))
    outs = list(cb.generate(PROMPT, 0, "tiny-sd3", json.dumps(columns), progress=lambda *a, **k: None))
    assert outs[-1][2 * N_COLUMNS + 1].startswith("Done: 2 images"), outs[-1][2 * N_COLUMNS + 1]
