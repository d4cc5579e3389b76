"""Sweeps and reports when things go wrong (issue 31): a full disk surfaces as one line, a refused model or a failed
report leaves nothing behind, and a variant another process claimed and never finished is named, never skipped
silently (a killed claim is taken back by the survivor)."""

import errno
import json
import socket
import sqlite3
from pathlib import Path

import pytest

import backend.runs.store as store_module
from backend.__main__ import main
from backend.runs.store import Store
from backend.runs.sweep import load_spec, parse_spec


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def sweep_spec(path: Path, model: str = "tiny-arch") -> str:
    path.write_text(json.dumps({"name": "faults", "base": {"model": model, "steps": 2}, "prompts": ["a", "b"],
                                "grid": {"steps": [3, 4]}, "runner": {"repeats": 0, "measure_macs": False}}))
    return str(path)


class FullDisk:
    """A SQLite connection on a full disk: every write fails, and SQLite has already rolled the transaction back
    (what it does on SQLITE_FULL), so a plain ROLLBACK would fail with 'no transaction is active'."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def execute(self, sql: str, *args):
        if sql.split()[0].upper() in ("UPDATE", "INSERT", "DELETE"):
            self.conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.conn, name)


def test_full_disk_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    real_save = Store.save_variant

    def save_variant(self, run_id, idx, images, *args):
        if idx == 0:
            return real_save(self, run_id, idx, images, *args)
        self.conn = FullDisk(self.conn)  # the disk fills up while variant 1's images are written
        raise OSError(errno.ENOSPC, "No space left on device", str(self.image_dir(run_id, idx) / "0000-seed0.png"))

    monkeypatch.setattr(Store, "save_variant", save_variant)
    rc, _, err = run_cli(["sweep", sweep_spec(tmp_path / "s.json"), "--out", str(tmp_path / "run")], capsys)
    assert rc == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "No space left on device" in last and "0000-seed0.png" in last, err
    assert "Traceback" not in err and "rollback" not in err


def test_full_disk_in_a_store_write_is_an_oserror(tmp_path):
    store = Store(tmp_path / "run")
    store.conn = FullDisk(store.conn)
    with pytest.raises(OSError, match="No space left on device") as info:
        store.create_job("sweep", job_id="j")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(store.path)


def test_refused_model_leaves_no_run_folder(tmp_path, capsys):
    from backend.models import build_random_pipeline

    build_random_pipeline("tiny-arch").save_pretrained(tmp_path / "pickled", safe_serialization=False)
    rundir = tmp_path / "run"
    rc, _, err = run_cli(["sweep", sweep_spec(tmp_path / "s.json", str(tmp_path / "pickled")), "--out", str(rundir)],
                         capsys)
    assert rc == 2 and "--allow-pickle" in err.strip().splitlines()[-1], err
    assert not rundir.exists()
    rundir.mkdir()  # a folder the user made: left as it was (empty)
    rc, _, err = run_cli(["sweep", str(tmp_path / "s.json"), "--out", str(rundir)], capsys)
    assert rc == 2 and list(rundir.iterdir()) == [], err


@pytest.fixture
def claimed_run(tmp_path):
    """A run folder where variant 2 is claimed ('running') by another process, as a killed sweep leaves it."""
    spec = sweep_spec(tmp_path / "s.json")
    sweep = parse_spec(load_spec(spec))
    rundir = tmp_path / "run"

    def claim(worker: str) -> tuple[str, Path, str]:
        with Store(rundir) as store:
            store.create_run(sweep.run_id, [v.to_dict() for v in sweep.variants], sweep.prompts, sweep.seeds, {}, {})
            with store.transaction() as c:
                c.execute("UPDATE variants SET status='running', worker=? WHERE run_id=? AND idx=2",
                          (worker, sweep.run_id))
        return spec, rundir, sweep.variants[2].name

    return claim


def test_variant_held_by_another_process_is_named(claimed_run, tmp_path, capsys):
    spec, rundir, name = claimed_run("elsewhere:4242:1.00")  # on another host: assumed alive
    rc, out, err = run_cli(["sweep", spec, "--out", str(rundir), "--json"], capsys)
    info = json.loads(out)
    assert rc == 0 and info["measured"] == 2 and list(info["unfinished"]) == [name], (out, err)
    assert f"{name} (running in process elsewhere:4242:1.00)" in err and "not complete" in err
    with Store(rundir, readonly=True) as store:
        assert store.runs()[0]["status"] == "running"  # not "done" with 2 of 3 variants
    rc, _, err = run_cli(["report", str(rundir), "--out", str(tmp_path / "r.html")], capsys)
    assert rc == 0 and f"not measured, missing from the report: {name} (running)" in err, err


def test_claim_of_a_process_killed_during_the_sweep_is_taken_back(claimed_run, monkeypatch, capsys):
    worker = f"{socket.gethostname()}:999999:1.00"
    spec, rundir, name = claimed_run(worker)
    asked = []
    real = store_module.worker_alive

    def worker_alive(w):  # alive when the survivor first tries variant 2, killed (kill -9) right after
        if w != worker:
            return real(w)
        asked.append(w)
        return len(asked) == 1

    monkeypatch.setattr(store_module, "worker_alive", worker_alive)
    rc, out, err = run_cli(["sweep", spec, "--out", str(rundir), "--json"], capsys)
    info = json.loads(out)
    assert rc == 0 and info["measured"] == 3 and info["unfinished"] == {}, (out, err)
    with Store(rundir, readonly=True) as store:
        run = store.runs()[0]
        assert run["status"] == "done" and store.variants_done(run["id"]) == 3


def test_failed_report_leaves_nothing(claimed_run, tmp_path, monkeypatch, capsys):
    import backend.reports.export as export

    spec, rundir, _ = claimed_run("elsewhere:4242:1.00")
    assert run_cli(["sweep", spec, "--out", str(rundir)], capsys)[0] == 0
    out = tmp_path / "report"
    out.mkdir()

    def full_disk(tmp, *args):
        tmp.write_bytes(b"PK")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    monkeypatch.setattr(export, "_write_zip", full_disk)
    rc, _, err = run_cli(["report", str(rundir), "--out", str(out / "r.html")], capsys)
    assert rc == 2 and "No space left on device" in err, err
    assert list(out.iterdir()) == []
