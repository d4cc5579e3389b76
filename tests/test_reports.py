"""Analysis, plots and report export on a synthetic run (no generation: fast)."""

import json
import math
import zipfile

import numpy as np
import pytest

from backend.__main__ import main as cli
from backend.reports import plots
from backend.reports.export import export_report
from backend.runs.store import Store

VARIANTS = [
    ({"name": "baseline", "model": "shapes", "steps": 20}, 1.0, 0.80),
    ({"name": "dc2", "model": "shapes", "steps": 20, "deepcache": {"interval": 2}}, 0.6, 0.78),
    ({"name": "dc4", "model": "shapes", "steps": 20, "deepcache": {"interval": 4}}, 0.4, 0.60),
    ({"name": "dc3-slow", "model": "shapes", "steps": 20, "deepcache": {"interval": 3}}, 0.7, 0.50),
    ({"name": "w8a8", "model": "shapes", "steps": 20, "quant": {"weight_bits": 8, "act_bits": 8}}, 1.1, 0.79),
    ({"name": "w4a8", "model": "shapes", "steps": 20, "quant": {"weight_bits": 4, "act_bits": 8}}, 1.1, 0.70),
    ({"name": "lcm4", "model": "shapes", "steps": 4, "consistency": {"checkpoint": "/x/lcd"}}, 0.1, 0.65),
    ({"name": "lcm2", "model": "shapes", "steps": 2, "consistency": {"checkpoint": "/x/lcd"}}, 0.05, 0.55),
]
PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def make_run(rundir, failed_last=False):
    rng = np.random.default_rng(0)
    with Store(rundir) as s:
        run_id = s.create_run("abc", [v for v, _, _ in VARIANTS], PROMPTS, [0, 1, 2],
                              {"repeats": 3, "warmup": 1, "batch_size": 16, "executor": "local"},
                              {"cpu": "x86_64", "torch": "2", "git_commit": "deadbee"}, spec={"name": "t"}, name="t")
        for i, (_v, latency, acc) in enumerate(VARIANTS):
            if failed_last and i == len(VARIANTS) - 1:
                s.mark_failed(run_id, i, "ValueError: boom")
                continue
            metrics = {"latency_s": latency, "latency_p90_s": latency * 1.1, "prompt_accuracy": acc,
                       "attr_accuracy": {"shape": acc, "color": acc}, "fd_shapes": 10 * (1 - acc), "reward": acc - 1,
                       "psnr_vs_baseline": math.inf if i == 0 else 20 + 10 * acc, "ssim_vs_baseline": acc,
                       "unet_evals": 40.0, "macs_per_image": 1e9 * latency, "peak_mem_mb": 500.0,
                       "model_size_mb": 4.0, "speedup": 1.0 / latency}
            s.save_variant(run_id, i, rng.random((3, 16, 16, 3)), PROMPTS, [0, 1, 2], metrics)
    return run_id


def test_frame_and_pareto(tmp_path):
    make_run(tmp_path / "run")
    with Store(tmp_path / "run") as s:
        df = plots.results_frame(s.variants("abc"))
    assert list(df["variant"]) == [v["name"] for v, _, _ in VARIANTS]
    assert df.loc[df.variant == "dc2", "speedup"].item() == pytest.approx(1 / 0.6)
    assert df.loc[df.variant == "dc2", "delta_prompt_accuracy"].item() == pytest.approx(-0.02)
    assert dict(zip(df.variant, df.family, strict=True))["lcm4"] == "LCM"
    assert df.loc[df.variant == "w4a8", "knob"].item() == 4
    front = plots.pareto_front(df, "prompt_accuracy")
    assert list(front["variant"]) == ["lcm2", "lcm4", "dc2", "baseline"]
    front_fd = plots.pareto_front(df, "fd_shapes")  # lower is better: same order here
    assert list(front_fd["variant"]) == ["lcm2", "lcm4", "dc2", "baseline"]
    assert "psnr_vs_baseline" in plots.available_quality(df)
    curves = plots.fig_method_curves(df, "speedup")
    assert {t.name for t in curves.data} >= {"DeepCache N (branch 0, uniform)", "PTQ bits (A8)", "LCM steps (lcd)"}
    titles = [t for t, _ in plots.figures(df)]
    assert titles[0] == "Pareto fronts" and "Speedup" in titles


def test_export_report(tmp_path):
    make_run(tmp_path / "run", failed_last=True)
    paths = export_report(tmp_path / "run", tmp_path / "out" / "report.html")
    page = paths.html.read_text()
    assert page.count("Plotly.newPlot") >= 3  # figures
    assert page.count("plotly.js v") <= 2  # plotly.js inlined once (its banner)
    assert "cdn.plot.ly" not in page.split("</head>")[1]  # nothing loaded from the network by the body
    assert page.count('<img class="gen"') == 7 * 3  # every finished variant × prompt
    for text in ("How time was measured", "deadbee", "seed", "lcm2", "ValueError: boom", "a green triangle"):
        assert text in page
    rows = paths.csv.read_text().strip().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 1 + 7 and {"latency_s", "speedup", "prompt_accuracy"} <= set(header)
    data = json.loads(paths.json.read_text())
    assert data["variants"][0]["psnr_vs_baseline"] == "inf" and data["unfinished"][0]["variant"] == "lcm2"
    names = zipfile.ZipFile(paths.zip).namelist()
    assert {"report.html", "metrics.csv", "metrics.json", "config.json"} <= set(names)
    assert sum(n.startswith("images/") for n in names) == 21


def test_report_cli(tmp_path, capsys):
    make_run(tmp_path / "run")
    assert cli(["report", str(tmp_path / "run"), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").is_file() and (tmp_path / "metrics.csv").is_file()
    capsys.readouterr()
    (tmp_path / "notrun").mkdir()
    assert cli(["report", str(tmp_path / "notrun"), "--out", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a Speedlab run" in err and "\n" not in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.db").write_bytes(b"garbage" * 100)
    assert cli(["report", str(tmp_path / "bad"), "--out", str(tmp_path / "x.html")]) == 2
    assert "not a SQLite database" in capsys.readouterr().err
    assert cli(["report", str(tmp_path / "run"), "--out", str(tmp_path / "x.pdf")]) == 2
    assert "must end in .html" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()
