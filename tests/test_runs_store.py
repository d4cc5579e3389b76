"""The SQLite results store: round trips, bad files, locks, concurrent writers, atomic variant writes, jobs."""

import math
import multiprocessing as mp
import sqlite3

import numpy as np
import pytest

from backend.runs.store import Store, StoreError, open_run


def _run(store, n_variants=3, prompts=("a red circle", "a blue square")):
    variants = [{"name": "baseline", "model": "tiny-arch"}] + [
        {"name": f"dc{i}", "model": "tiny-arch", "deepcache": {"interval": i + 1}} for i in range(1, n_variants)]
    return store.create_run("r1", variants, list(prompts), [0, 1], {"repeats": 1}, {"cpu": "x"}, spec={"a": 1},
                            name="test")


def test_round_trip(tmp_path):
    with Store(tmp_path / "run") as s:
        run_id = _run(s)
        images = np.random.default_rng(0).random((2, 8, 8, 3)).astype(np.float32)
        metrics = {"latency_s": 0.5, "psnr_vs_baseline": math.inf, "attr_accuracy": {"shape": 0.75},
                   "clip_score": None, "note": "text"}
        s.save_variant(run_id, 0, images, ["a red circle", "a blue square"], [0, 1], metrics)
        assert s.pending(run_id) == [1, 2]
        v = s.variants(run_id)[0]
        assert v["status"] == "done" and v["is_baseline"]
        assert v["metrics"]["latency_s"] == 0.5 and v["metrics"]["psnr_vs_baseline"] == math.inf
        assert v["metrics"]["attr_accuracy"] == {"shape": 0.75}
        assert v["metrics"]["clip_score"] is None and v["metrics"]["note"] == "text"
        assert [im["seed"] for im in v["images"]] == [0, 1]
        back = s.load_images(run_id, 0)
        assert np.abs(back - images).max() <= 0.5 / 255 + 1e-6
        run = s.run()
        assert run["id"] == run_id and run["n_done"] == 1 and run["n_variants"] == 3
        assert run["prompts"] == ["a red circle", "a blue square"] and run["environment"] == {"cpu": "x"}
    # reopening keeps everything; creating the same run again resumes it
    with open_run(tmp_path / "run") as s:
        assert _run(s) == "r1"
        assert s.pending("r1") == [1, 2]


def test_bad_files(tmp_path):
    text = tmp_path / "notdb"
    text.mkdir()
    (text / "results.db").write_text("hello, this is not a database at all")
    with pytest.raises(StoreError, match="not a SQLite database"):
        Store(text)
    other = tmp_path / "other"
    other.mkdir()
    con = sqlite3.connect(other / "results.db")
    con.execute("CREATE TABLE customers (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="another program"):
        Store(other)
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a Speedlab run"):
        open_run(tmp_path / "plain")
    with pytest.raises(StoreError, match="does not exist"):
        open_run(tmp_path / "missing")
    with Store(tmp_path / "ok") as s, pytest.raises(StoreError, match="no run yet"):
        s.run()


def test_locked_store_is_a_clear_error(tmp_path):
    s = Store(tmp_path / "run")
    _run(s)
    holder = sqlite3.connect(tmp_path / "run" / "results.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        s.timeout_s = 0.2
        s.conn.execute("PRAGMA busy_timeout = 200")
        with pytest.raises(StoreError, match="locked"):
            s.claim("r1", 1)
        with pytest.raises(StoreError, match="locked"):
            Store(tmp_path / "run", timeout_s=0.2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    s.claim("r1", 1)
    s.close()


def test_atomic_variant_write(tmp_path):
    with Store(tmp_path / "run") as s:
        _run(s)
        images = np.zeros((2, 8, 8, 3), np.float32)
        with pytest.raises(ValueError):
            s.save_variant("r1", 1, images[:1], ["a", "b"], [0, 1], {"latency_s": 1.0})

        class Boom(Exception):
            pass

        # a crash in the middle of the transaction leaves nothing half-written
        original = s.conn

        class Failing:
            def __init__(self, conn):
                self.conn, self.n = conn, 0

            def execute(self, sql, *args):
                if sql.startswith("INSERT INTO images"):
                    raise Boom()
                return self.conn.execute(sql, *args)

            def __getattr__(self, name):  # in_transaction, close, ...: the real connection's
                return getattr(self.conn, name)

        s.conn = Failing(original)
        with pytest.raises(Boom):
            s.save_variant("r1", 1, images, ["a", "b"], [0, 1], {"latency_s": 1.0})
        s.conn = original
        v = s.variants("r1")[1]
        assert v["status"] == "pending" and v["metrics"] == {} and v["images"] == []
        s.save_variant("r1", 1, images, ["a", "b"], [0, 1], {"latency_s": 1.0})
        assert s.variants("r1")[1]["status"] == "done"


def _writer(path, worker):
    s = Store(path)
    for i in range(15):
        job = s.create_job("sweep", params={"worker": worker, "i": i})
        s.update_job(job, status="running", progress={"step": i})
    s.close()


def test_two_processes_write_concurrently(tmp_path):
    Store(tmp_path / "run").close()
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(tmp_path / "run", w)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with Store(tmp_path / "run") as s:
        jobs = s.jobs(kind="sweep")
        assert len(jobs) == 30 and all(j["status"] == "running" for j in jobs)
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_jobs(tmp_path):
    with Store(tmp_path / "run") as s:
        job = s.create_job("finetune", params={"method": "lcd"}, out_dir=str(tmp_path / "out"))
        s.update_job(job, status="running", progress={"step": 1, "total": 10})
        s.update_job(job, progress={"step": 5, "loss": 0.1})
        j = s.job(job)
        assert j["status"] == "running" and j["progress"] == {"step": 5, "total": 10, "loss": 0.1}
        assert j["params"] == {"method": "lcd"} and j["out_dir"] == str(tmp_path / "out")
        with pytest.raises(ValueError, match="allowed"):
            s.update_job(job, status="exploded")
        with pytest.raises(StoreError):
            s.job("nope")
        assert [x["id"] for x in s.jobs(status="running")] == [job]
        from backend.core import JobControl

        JobControl(on_progress=s.job_reporter(job)).report(step=7, total=10)
        assert s.job(job)["progress"]["step"] == 7 and "elapsed_s" in s.job(job)["progress"]
