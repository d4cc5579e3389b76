"""The results store: SQLite (runs, variants, metrics, image paths, environment, long-job state), images on disk.

A run directory holds ``results.db`` and ``images/``; ``Store(rundir)`` opens (or creates) it.

- WAL journal and a busy timeout: two processes (a sweep and the UI, or two sweeps) can write at once.
- Every write is one transaction: a variant's metrics, image rows and its ``done`` status land together or
  not at all, so a crash mid-sweep keeps the finished variants and a rerun resumes where it stopped.
- Images are written to a temporary name and renamed before their rows are committed.
- A file that is not SQLite, a database of another program, or one locked past the timeout raises
  :class:`StoreError` (a ValueError: the CLI prints it on one line and exits 2).

Tables: ``runs`` (spec, prompts, seeds, settings, environment, status), ``variants`` (config, status, error),
``metrics`` (one row per metric; nested metrics such as ``attr_accuracy.shape`` flattened), ``images``
(variant, prompt index, seed, path relative to the run directory), ``jobs`` (id, kind, status, progress
JSON, created/updated, out dir: fine-tunes and sweeps that the UI follows) and ``meta`` (schema version).
"""

from __future__ import annotations

import errno
import json
import math
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

DB_NAME = "results.db"
SCHEMA_VERSION = 1
APPLICATION_ID = 0x5350444C  # "SPDL": marks a Speedlab store
JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, name TEXT, status TEXT NOT NULL DEFAULT 'running',
    spec TEXT NOT NULL, prompts TEXT NOT NULL, seeds TEXT NOT NULL, settings TEXT NOT NULL,
    environment TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS variants (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, idx INTEGER NOT NULL,
    name TEXT NOT NULL, config TEXT NOT NULL, is_baseline INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending', error TEXT, started REAL, finished REAL, worker TEXT,
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL, variant_idx INTEGER NOT NULL, name TEXT NOT NULL, value REAL, text TEXT,
    PRIMARY KEY (run_id, variant_idx, name),
    FOREIGN KEY (run_id, variant_idx) REFERENCES variants(run_id, idx) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS images (
    run_id TEXT NOT NULL, variant_idx INTEGER NOT NULL, prompt_idx INTEGER NOT NULL,
    prompt TEXT NOT NULL, seed INTEGER NOT NULL, path TEXT NOT NULL,
    PRIMARY KEY (run_id, variant_idx, prompt_idx),
    FOREIGN KEY (run_id, variant_idx) REFERENCES variants(run_id, idx) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, progress TEXT NOT NULL DEFAULT '{}',
    params TEXT NOT NULL DEFAULT '{}', out_dir TEXT, error TEXT, pid INTEGER,
    created REAL NOT NULL, updated REAL NOT NULL
);
"""


def _worker_id(pid: int) -> str | None:
    """host:pid:start-time of a live process (the start time tells a reused pid apart), None when it is gone."""
    import psutil

    try:
        return f"{socket.gethostname()}:{pid}:{psutil.Process(pid).create_time():.2f}"
    except psutil.Error:
        return None


@lru_cache(maxsize=4)
def _me(pid: int) -> str | None:
    return _worker_id(pid)


def current_worker() -> str | None:
    """This process as recorded in the variants it claims (per pid: a forked child is another worker)."""
    return _me(os.getpid())


def worker_alive(worker: str | None) -> bool:
    """Whether the process that claimed a variant still runs (one on another host is assumed alive)."""
    if not worker:
        return False
    host, _, rest = worker.partition(":")
    if host != socket.gethostname():
        return True
    pid = rest.partition(":")[0]
    return pid.isdigit() and _worker_id(int(pid)) == worker


class StoreError(ValueError):
    """A store that cannot be used: not SQLite, not a Speedlab store, locked, or a missing run."""


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_json_default)


def _json_default(value: Any):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def flatten_metrics(metrics: dict, prefix: str = "") -> dict:
    """{"attr_accuracy": {"shape": 1.0}} -> {"attr_accuracy.shape": 1.0}."""
    out: dict = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_metrics(value, name + "."))
        else:
            out[name] = value
    return out


def unflatten_metrics(flat: dict) -> dict:
    out: dict = {}
    for name, value in flat.items():
        parts = name.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float N×H×W×3 images in [0, 1] -> uint8 (what is saved as PNG)."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)


class Store:
    """One run directory: ``results.db`` plus ``images/``. Safe to open from several processes."""

    def __init__(self, rundir: str | Path, create: bool = True, timeout_s: float = 30.0, readonly: bool = False):
        self.root = Path(rundir)
        self.path = self.root / DB_NAME if self.root.suffix != ".db" else self.root
        if self.root.suffix == ".db":
            self.root = self.path.parent
        self.created, self.made_root = not self.path.exists(), not self.root.exists()  # for discard()
        if not self.path.exists():
            if not create:
                raise StoreError(f"{self.root} is not a Speedlab run: {self.path.name} is missing "
                                 "(make one with python -m backend sweep SPEC --out RUNDIR)")
            if self.root.exists() and not self.root.is_dir():
                raise StoreError(f"--out {self.root} exists and is not a directory")
            self.root.mkdir(parents=True, exist_ok=True)
        elif self.path.is_dir():
            raise StoreError(f"{self.path} is a directory, not a SQLite results store")
        self.timeout_s, self.readonly = timeout_s, readonly
        self._check_header()
        target = str(self.path)
        if readonly:  # with no writer active (no -wal file), immutable: SQLite creates no -wal/-shm either
            wal = self.path.with_name(self.path.name + "-wal").exists()
            target = f"{self.path.resolve().as_uri()}?mode=ro" + ("" if wal else "&immutable=1")
        try:
            self.conn = sqlite3.connect(target, timeout=timeout_s, isolation_level=None, check_same_thread=False,
                                        uri=readonly)
        except sqlite3.DatabaseError as exc:
            raise self._wrap(exc) from exc
        try:
            self.conn.row_factory = sqlite3.Row
            self.conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            self._check_owner()  # before anything that writes (the journal mode leaves -wal/-shm files)
            if readonly:
                self._check_version()
                return
            # WAL persists in the file: setting it again takes a lock that SQLite refuses at once (no busy
            # wait) while other connections read, so a store opened beside a running job set it only when new
            if self.conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self._init_schema()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise self._wrap(exc) from exc
        except StoreError:
            self.conn.close()
            raise

    # ---- opening -------------------------------------------------------------------------------------------

    def _check_header(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb") as f:
            header = f.read(16)
        if header != b"SQLite format 3\x00":
            raise StoreError(f"{self.path} is not a SQLite database (a Speedlab results store is expected)")

    def _wrap(self, exc: sqlite3.DatabaseError) -> StoreError | OSError:
        text = str(exc)
        if "disk is full" in text:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        if "locked" in text or "busy" in text:
            return StoreError(f"{self.path} is locked by another process for more than {self.timeout_s:g} s; "
                              "wait for it to finish or close it")
        if "not a database" in text or "malformed" in text:
            return StoreError(f"{self.path} is not a usable SQLite database ({text})")
        return StoreError(f"{self.path}: SQLite error: {text}")

    def _check_owner(self) -> None:
        """StoreError for a SQLite file of another program (read-only queries: the file is left as it was)."""
        app_id = self.conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if app_id not in (0, APPLICATION_ID) or (app_id == 0 and tables and "runs" not in tables):
            raise StoreError(f"{self.path} is a SQLite database of another program, not a Speedlab results store")
        if self.readonly and "runs" not in tables:
            raise StoreError(f"{self.path} holds no Speedlab run yet (make one with python -m backend sweep)")

    def _check_version(self) -> None:
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row else SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}; this Speedlab reads up to {SCHEMA_VERSION}")

    def _init_schema(self) -> None:
        app_id = self.conn.execute("PRAGMA application_id").fetchone()[0]
        with self.transaction() as c:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
            c.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            if "worker" not in {r[1] for r in c.execute("PRAGMA table_info(variants)")}:  # stores made before claims
                c.execute("ALTER TABLE variants ADD COLUMN worker TEXT")
        if app_id == 0:
            self.conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        self._check_version()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT (ROLLBACK on any error): all of a write lands, or none of it."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise self._wrap(exc) from exc
        try:
            yield self.conn
        except sqlite3.DatabaseError as exc:
            self._rollback()
            raise self._wrap(exc) from exc
        except BaseException:
            self._rollback()
            raise
        else:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                self._rollback()
                raise self._wrap(exc) from exc

    def _rollback(self) -> None:
        """ROLLBACK unless SQLite already rolled the transaction back itself (it does on a full disk)."""
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()

    def discard(self) -> None:
        """Close and delete what this store made (a new one that measured nothing): the database, its journal
        files, images/, and the run folder when it made it and nothing else is there."""
        import shutil

        self.close()
        for path in (self.path, *(self.path.with_name(self.path.name + s) for s in ("-wal", "-shm", "-journal"))):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.root / "images", ignore_errors=True)
        if self.made_root and not any(self.root.iterdir()):
            self.root.rmdir()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- runs ----------------------------------------------------------------------------------------------

    def create_run(self, run_id: str, variants: list[dict], prompts: list[str], seeds: list[int],
                   settings: dict, environment: dict, spec: dict | None = None, name: str | None = None) -> str:
        """Register a run and its variants (pending); an existing run with this id is kept (resume)."""
        now = time.time()
        with self.transaction() as c:
            row = c.execute("SELECT prompts, seeds FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is not None:
                if json.loads(row["prompts"]) != list(prompts) or json.loads(row["seeds"]) != list(seeds):
                    raise StoreError(f"run {run_id} exists with other prompts or seeds; use another --out")
                c.execute("UPDATE runs SET status='running', updated=? WHERE id=?", (now, run_id))
                return run_id
            c.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?)",
                      (run_id, name, "running", _dumps(spec or {}), _dumps(list(prompts)), _dumps(list(seeds)),
                       _dumps(settings), _dumps(environment), now, now))
            for i, v in enumerate(variants):
                c.execute("INSERT INTO variants (run_id, idx, name, config, is_baseline) VALUES (?,?,?,?,?)",
                          (run_id, i, v.get("name") or f"variant-{i}", _dumps(v), int(i == 0)))
        return run_id

    def set_run_status(self, run_id: str, status: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET status=?, updated=? WHERE id=?", (status, time.time(), run_id))

    def runs(self) -> list[dict]:
        """Every run, newest first, with its variant counts."""
        rows = self.conn.execute(
            "SELECT r.*, (SELECT COUNT(*) FROM variants v WHERE v.run_id=r.id) AS n_variants,"
            " (SELECT COUNT(*) FROM variants v WHERE v.run_id=r.id AND v.status='done') AS n_done"
            " FROM runs r ORDER BY r.created DESC").fetchall()
        return [self._run_dict(r) for r in rows]

    def run(self, run_id: str | None = None) -> dict:
        """One run (the newest when run_id is None)."""
        if run_id is None:
            row = self.conn.execute("SELECT id FROM runs ORDER BY created DESC LIMIT 1").fetchone()
            if row is None:
                raise StoreError(f"{self.root} holds no run yet")
            run_id = row["id"]
        row = self.conn.execute(
            "SELECT r.*, (SELECT COUNT(*) FROM variants v WHERE v.run_id=r.id) AS n_variants,"
            " (SELECT COUNT(*) FROM variants v WHERE v.run_id=r.id AND v.status='done') AS n_done"
            " FROM runs r WHERE id=?", (run_id,)).fetchone()
        if row is None:
            known = ", ".join(r["id"] for r in self.runs()) or "none"
            raise StoreError(f"run {run_id!r} is not in {self.path}; runs there: {known}")
        return self._run_dict(row)

    @staticmethod
    def _run_dict(row: sqlite3.Row) -> dict:
        d = dict(row)
        for key in ("spec", "prompts", "seeds", "settings", "environment"):
            d[key] = json.loads(d[key])
        return d

    # ---- variants ------------------------------------------------------------------------------------------

    def variants(self, run_id: str) -> list[dict]:
        """The run's variants in order, each with its config, status, metrics (nested) and image paths."""
        rows = self.conn.execute("SELECT * FROM variants WHERE run_id=? ORDER BY idx", (run_id,)).fetchall()
        metrics: dict[int, dict] = {}
        for m in self.conn.execute("SELECT * FROM metrics WHERE run_id=?", (run_id,)):
            value = json.loads(m["text"]) if m["text"] is not None else m["value"]
            if value in ("inf", "-inf", "nan"):
                value = float(value)
            metrics.setdefault(m["variant_idx"], {})[m["name"]] = value
        images: dict[int, list] = {}
        for im in self.conn.execute("SELECT * FROM images WHERE run_id=? ORDER BY prompt_idx", (run_id,)):
            images.setdefault(im["variant_idx"], []).append(
                {"prompt_idx": im["prompt_idx"], "prompt": im["prompt"], "seed": im["seed"], "path": im["path"]})
        out = []
        for r in rows:
            d = dict(r)
            d["config"] = json.loads(d["config"])
            d["is_baseline"] = bool(d["is_baseline"])
            d["metrics"] = unflatten_metrics(metrics.get(r["idx"], {}))
            d["images"] = images.get(r["idx"], [])
            out.append(d)
        return out

    def variants_done(self, run_id: str) -> int:
        """How many of the run's variants are measured (by any process)."""
        return self.conn.execute("SELECT COUNT(*) FROM variants WHERE run_id=? AND status='done'",
                                 (run_id,)).fetchone()[0]

    def pending(self, run_id: str) -> list[int]:
        """Indices of the variants not finished yet (a rerun does only these)."""
        rows = self.conn.execute("SELECT idx FROM variants WHERE run_id=? AND status!='done' ORDER BY idx",
                                 (run_id,)).fetchall()
        return [r["idx"] for r in rows]

    def claim(self, run_id: str, idx: int) -> bool:
        """Take a variant for this process (status 'running', worker = this process); False when another live
        process holds it or it is done. Atomic: two processes on one run directory never take the same variant.
        A variant left 'running' by a process that is gone (killed) is taken back."""
        with self.transaction() as c:
            row = c.execute("SELECT status, worker FROM variants WHERE run_id=? AND idx=?", (run_id, idx)).fetchone()
            if row is not None and row["status"] == "running" and not worker_alive(row["worker"]):
                c.execute("UPDATE variants SET status='pending' WHERE run_id=? AND idx=? AND status='running'",
                          (run_id, idx))
            taken = c.execute("UPDATE variants SET status='running', error=NULL, started=?, worker=? "
                              "WHERE run_id=? AND idx=? AND status IN ('pending', 'failed')",
                              (time.time(), current_worker(), run_id, idx)).rowcount
        return taken == 1

    def holder(self, run_id: str, idx: int) -> tuple[str, str | None]:
        """(status, worker) of a variant; status 'stale' when it is 'running' in a process that is gone."""
        row = self.conn.execute("SELECT status, worker FROM variants WHERE run_id=? AND idx=?",
                                (run_id, idx)).fetchone()
        if row is None:
            raise StoreError(f"variant {idx} of run {run_id!r} is not in the store")
        stale = row["status"] == "running" and not worker_alive(row["worker"])
        return ("stale" if stale else row["status"]), row["worker"]

    def reset_running(self, run_id: str) -> None:
        """Variants this process left 'running' (an interrupted sweep) go back to 'pending'."""
        with self.transaction() as c:
            c.execute("UPDATE variants SET status='pending' WHERE run_id=? AND status='running' AND worker=?",
                      (run_id, current_worker()))

    def mark_failed(self, run_id: str, idx: int, error: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE variants SET status='failed', error=?, finished=? WHERE run_id=? AND idx=?",
                      (error, time.time(), run_id, idx))

    def image_dir(self, run_id: str, idx: int) -> Path:
        return self.root / "images" / run_id / f"v{idx:03d}"

    def save_variant(self, run_id: str, idx: int, images: np.ndarray, prompts: list[str], seeds: list[int],
                     metrics: dict) -> None:
        """Write the images (temporary name, then rename), then metrics, image rows and ``done`` in one transaction."""
        from PIL import Image

        images = to_uint8(images)
        if len(images) != len(prompts) or len(prompts) != len(seeds):
            raise ValueError("images, prompts and seeds must have the same length")
        folder = self.image_dir(run_id, idx)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, image in enumerate(images):
            path = folder / f"{i:04d}-seed{int(seeds[i])}.png"
            tmp = path.with_name(path.name + ".tmp")
            Image.fromarray(image).save(tmp, format="PNG")
            tmp.replace(path)
            paths.append(path.relative_to(self.root).as_posix())
        flat = flatten_metrics(metrics)
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM variants WHERE run_id=? AND idx=?", (run_id, idx)).fetchone() is None:
                raise StoreError(f"variant {idx} of run {run_id!r} is not in the store")
            c.execute("DELETE FROM metrics WHERE run_id=? AND variant_idx=?", (run_id, idx))
            c.execute("DELETE FROM images WHERE run_id=? AND variant_idx=?", (run_id, idx))
            for name, value in flat.items():
                if isinstance(value, (bool, np.bool_)):
                    value = int(value)
                if isinstance(value, (int, float, np.integer, np.floating)) and value is not None:
                    num = float(value)
                    text = None if math.isfinite(num) else _dumps(str(num))
                    c.execute("INSERT INTO metrics VALUES (?,?,?,?,?)",
                              (run_id, idx, name, num if math.isfinite(num) else None, text))
                else:
                    c.execute("INSERT INTO metrics VALUES (?,?,?,?,?)", (run_id, idx, name, None, _dumps(value)))
            for i, path in enumerate(paths):
                c.execute("INSERT INTO images VALUES (?,?,?,?,?,?)", (run_id, idx, i, prompts[i], int(seeds[i]), path))
            c.execute("UPDATE variants SET status='done', error=NULL, finished=? WHERE run_id=? AND idx=?",
                      (time.time(), run_id, idx))
            c.execute("UPDATE runs SET updated=? WHERE id=?", (time.time(), run_id))

    def load_images(self, run_id: str, idx: int) -> np.ndarray:
        """A finished variant's images as float N×H×W×3 in [0, 1] (exactly what its metrics saw)."""
        from PIL import Image

        rows = self.conn.execute("SELECT path FROM images WHERE run_id=? AND variant_idx=? ORDER BY prompt_idx",
                                 (run_id, idx)).fetchall()
        if not rows:
            raise StoreError(f"variant {idx} of run {run_id!r} has no images in the store")
        paths = [self.image_path(r["path"]) for r in rows]
        missing = next((r["path"] for r, p in zip(rows, paths, strict=True) if p is None), None)
        if missing is not None:
            raise StoreError(f"variant {idx} of run {run_id!r}: image {missing!r} is missing or outside {self.root}")
        return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths]).astype(np.float32) / 255.0

    def image_path(self, relative: str) -> Path | None:
        """An image row's file, only when it resolves to a file inside the run directory (else None)."""
        root = self.root.resolve()
        path = (root / relative).resolve()
        return path if path.is_relative_to(root) and path.is_file() else None

    # ---- jobs ----------------------------------------------------------------------------------------------

    def create_job(self, kind: str, params: dict | None = None, out_dir: str | None = None,
                   job_id: str | None = None, status: str = "queued") -> str:
        if status not in JOB_STATUSES:
            raise ValueError(f"job status {status!r} is not allowed; allowed: {', '.join(JOB_STATUSES)}")
        job_id = job_id or uuid.uuid4().hex[:12]
        now = time.time()
        with self.transaction() as c:
            c.execute("INSERT INTO jobs (id, kind, status, params, out_dir, created, updated) VALUES (?,?,?,?,?,?,?)",
                      (job_id, kind, status, _dumps(params or {}), None if out_dir is None else str(out_dir), now, now))
        return job_id

    def update_job(self, job_id: str, status: str | None = None, progress: dict | None = None,
                   error: str | None = None, pid: int | None = None) -> None:
        """Set status and/or merge progress fields (step, total, loss, eta_s, ...)."""
        if status is not None and status not in JOB_STATUSES:
            raise ValueError(f"job status {status!r} is not allowed; allowed: {', '.join(JOB_STATUSES)}")
        with self.transaction() as c:
            row = c.execute("SELECT progress FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise StoreError(f"job {job_id!r} is not in {self.path}")
            merged = {**json.loads(row["progress"]), **(progress or {})}
            c.execute("UPDATE jobs SET status=COALESCE(?, status), progress=?, error=COALESCE(?, error),"
                      " pid=COALESCE(?, pid), updated=? WHERE id=?",
                      (status, _dumps(merged), error, pid, time.time(), job_id))

    def job_reporter(self, job_id: str):
        """An ``on_progress`` for ``JobControl``: each report is merged into the job's progress."""
        def report(fields: dict) -> None:
            self.update_job(job_id, progress=fields)

        return report

    def job(self, job_id: str) -> dict:
        row = self.conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise StoreError(f"job {job_id!r} is not in {self.path}")
        return self._job_dict(row)

    def jobs(self, kind: str | None = None, status: str | None = None) -> list[dict]:
        query, args = "SELECT * FROM jobs WHERE 1=1", []
        if kind:
            query, args = query + " AND kind=?", args + [kind]
        if status:
            query, args = query + " AND status=?", args + [status]
        return [self._job_dict(r) for r in self.conn.execute(query + " ORDER BY created DESC", args)]

    @staticmethod
    def _job_dict(row: sqlite3.Row) -> dict:
        d = dict(row)
        d["progress"], d["params"] = json.loads(d["progress"]), json.loads(d["params"])
        return d


def open_run(rundir: str | Path, readonly: bool = False) -> Store:
    """An existing run directory's store (``readonly``: nothing in it is changed); StoreError when RUNDIR is not a
    run."""
    root = Path(rundir)
    if not root.exists():
        raise StoreError(f"RUNDIR {root} does not exist")
    return Store(root, create=False, readonly=readonly)
