"""Fault injection: ``kill -9`` in the middle of a sweep, an EfficientDM fine-tune and an LCD distillation (tiny
models, a subprocess each), then resume: nothing finished is lost or done twice, training goes on from the last
checkpoint. Plus the sweep's variant claims: two processes on one run directory split the work."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
TINY = json.dumps({"model": "tiny-arch", "steps": 2})
DEADLINE_S = 240  # a subprocess that never reaches the state to kill in fails the test instead of hanging it


def start(argv: list[str], log: Path) -> subprocess.Popen:
    """``python -m backend ARGV`` in a subprocess; stderr to ``log``, stdout to ``log`` + ".out"."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with log.open("w") as err, log.with_suffix(".out").open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "backend", *argv], cwd=ROOT, env=env, stdout=out, stderr=err)


def kill_when(proc: subprocess.Popen, ready, log: Path):
    """Poll ``ready()`` until it returns a value, then SIGKILL the process; the value is returned."""
    end = time.monotonic() + DEADLINE_S
    try:
        while time.monotonic() < end:
            value = ready()
            if value:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                assert proc.returncode == -signal.SIGKILL, "the process ended before it was killed"
                return value
            if proc.poll() is not None:
                pytest.fail(f"the process exited ({proc.returncode}) before the kill: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        pytest.fail("the process never reached the state to kill it in")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def sweep_spec(path: Path, n_variants: int) -> Path:
    path.write_text(json.dumps({
        "name": "faults", "base": {"model": "tiny-arch", "steps": 2}, "prompts": ["a red circle", "a blue square"],
        "grid": {"steps": list(range(2, 2 + n_variants))}, "runner": {"repeats": 0, "measure_macs": False}}))
    return path


def variant_rows(db: Path) -> list[tuple]:
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return con.execute("SELECT idx, status, finished FROM variants ORDER BY idx").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        con.close()


def test_sweep_killed_then_resumed(tmp_path, capsys):
    spec, run = sweep_spec(tmp_path / "spec.json", 12), tmp_path / "run"
    proc = start(["sweep", str(spec), "--out", str(run)], tmp_path / "log")

    def two_done():
        rows = variant_rows(run / "results.db") if (run / "results.db").exists() else []
        done = {idx: finished for idx, status, finished in rows if status == "done"}
        return done if len(done) >= 2 else None

    done_before = kill_when(proc, two_done, tmp_path / "log")
    assert len(done_before) < 13, "the sweep finished before it was killed"
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["resumed_skipped"] == len(done_before) and info["measured"] == 13 - len(done_before)
    rows = variant_rows(run / "results.db")
    assert [status for _, status, _ in rows] == ["done"] * 13
    assert {idx: finished for idx, _, finished in rows if idx in done_before} == done_before  # not redone
    con = sqlite3.connect(run / "results.db")
    paths = [p for (p,) in con.execute("SELECT path FROM images")]
    con.close()
    assert len(paths) == len(set(paths)) == 13 * 2 and all((run / p).is_file() for p in paths)
    assert not list(run.rglob("*.tmp"))


def test_efficientdm_killed_then_resumed(tmp_path):
    from backend.core import JobControl
    from backend.methods.quant.checkpoint import read_meta
    from backend.methods.quant.config import FinetuneConfig
    from backend.methods.quant.train import finetune
    from backend.models import load_pipeline

    out, prompts = tmp_path / "ckpt", tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")  # one prompt: calibration samples one trajectory
    settings = {"batch_size": 1, "train_steps": 2}
    proc = start(["finetune", "efficientdm", "--variant", TINY, "--out", str(out), "--max-iters", "1000000",
                  "--batch-size", "1", "--train-steps", "2", "--checkpoint-every", "1", "--prompts", str(prompts)],
                 tmp_path / "log")

    def checkpointed():
        try:
            return read_meta(out)["training"]["iters"]
        except (ValueError, KeyError):
            return None

    kill_when(proc, checkpointed, tmp_path / "log")
    saved = read_meta(out)["training"]["iters"]  # the last checkpoint the killed process completed
    seen = []
    result = finetune(load_pipeline("tiny-arch"), FinetuneConfig.from_dict({**settings, "max_iters": saved + 3}), out,
                      job=JobControl(on_progress=seen.append), prompts=["a red circle"])
    assert seen[0]["step"] == saved + 1 and result["iters"] == saved + 3  # resumed, not restarted nor repeated
    assert read_meta(out)["training"]["iters"] == saved + 3 and read_meta(out)["training"]["done"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written checkpoint left


def test_lcd_killed_then_resumed(tmp_path):
    from backend.__main__ import build_parser
    from backend.core import JobControl
    from backend.methods.consistency.cli import config_from_args
    from backend.methods.consistency.distill import distill, latest_state, read_state_meta, work_dir_for
    from backend.models import load_pipeline

    out = tmp_path / "student"
    argv = ["finetune", "lcd", "--variant", TINY, "--out", str(out), "--batch-size", "2", "--num-ddim-timesteps", "4"]
    proc = start([*argv, "--minutes", "30", "--checkpoint-every", "1"], tmp_path / "log")
    work = work_dir_for(out)
    kill_when(proc, lambda: latest_state(work), tmp_path / "log")
    saved = read_state_meta(latest_state(work))["step"]
    cfg = config_from_args(build_parser().parse_args([*argv, "--max-steps", str(saved + 2)]))
    seen = []
    summary = distill(load_pipeline("tiny-arch"), cfg, out, JobControl(on_progress=seen.append))
    assert seen[0]["step"] == saved + 1 and summary["status"] == "done" and summary["steps"] == saved + 2
    assert (out / "speedlab_consistency.json").is_file() and not work.exists()


def test_claims_are_atomic_and_stale_ones_are_taken_back(tmp_path):
    from backend.runs.store import Store

    with Store(tmp_path / "run") as a, Store(tmp_path / "run") as b:
        a.create_run("r", [{"name": "base"}, {"name": "v1"}], ["p"], [0], {}, {})
        assert a.claim("r", 1) and not b.claim("r", 1)  # held by a live process (this one)
        b.conn.execute("UPDATE variants SET worker='elsewhere:1:0.00' WHERE idx=1")  # another host: assumed alive
        assert not b.claim("r", 1)
        b.conn.execute(f"UPDATE variants SET worker='{os.uname().nodename}:999999999:0.00' WHERE idx=1")  # gone
        assert b.claim("r", 1) and b.holder("r", 1)[0] == "running"
        b.conn.execute("UPDATE variants SET worker='elsewhere:1:0.00' WHERE idx=1")
        a.reset_running("r")  # an interrupted sweep resets only its own claims
        assert b.holder("r", 1)[0] == "running"


def test_two_sweeps_on_one_run_directory_split_the_work(tmp_path):
    spec, run = sweep_spec(tmp_path / "spec.json", 8), tmp_path / "run"
    procs = [start(["sweep", str(spec), "--out", str(run), "--json"], tmp_path / f"log{i}") for i in (1, 2)]
    for i, proc in enumerate(procs, 1):
        assert proc.wait(timeout=DEADLINE_S) == 0, (tmp_path / f"log{i}").read_text()[-2000:]
    measured = [json.loads((tmp_path / f"log{i}.out").read_text())["measured"] for i in (1, 2)]
    assert sum(measured) == 9, measured  # every variant measured once, by one process or the other
    assert [status for _, status, _ in variant_rows(run / "results.db")] == ["done"] * 9


def test_checkpoint_moved_aside_by_a_crash_is_put_back(tmp_path):
    """A kill between write_dir's two renames leaves the old checkpoint aside and the new one half-written."""
    from backend.methods.quant.checkpoint import CONFIG_FILE, check_out

    out = tmp_path / "ckpt"
    (tmp_path / ".ckpt.old-1a2b3c4d").mkdir()
    (tmp_path / ".ckpt.old-1a2b3c4d" / CONFIG_FILE).write_text("{}")
    (tmp_path / ".ckpt.tmp-5e6f7a8b").mkdir()
    assert check_out(out) == out and (out / CONFIG_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
