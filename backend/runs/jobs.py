"""The fine-tune job service: jobs run in worker processes, followed through the results store, cancelled by a
flag file; the training loops see only :class:`backend.core.JobControl`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from backend.methods import registry

# ---- the fine-tune job service ----------------------------------------------------------------------------------

ACTIVE = ("queued", "running")  # store statuses of a job whose worker may still be alive
STARTING = "starting worker"


def job_config_class(kind: str) -> type:
    """The settings class of a registered fine-tune kind (ValueError naming the allowed kinds)."""
    return registry.resolve(registry.finetune(kind)[1].config)


class FileFlag:
    """A cancel flag another process (or a restarted UI) can set: the file exists."""

    def __init__(self, path):
        self.path = Path(path)

    def is_set(self) -> bool:
        return self.path.exists()

    def set(self) -> None:
        self.path.touch()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def pid_alive(pid: int | None) -> bool:
    """The process exists and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, PermissionError, ValueError):
        return False
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class JobLimits:
    """What a server allows: jobs running at once, minutes per job, folders that ``data`` paths may be in."""

    max_running: int = 1
    max_minutes: float = 30.0
    data_roots: tuple = ()


class JobService:
    """Fine-tunes as jobs in their own worker process (``python -m backend.runs.job_worker``).

    The job's state (status, pid, progress, error, settings) lives in one place: the results store's ``jobs``
    table at ``root``; ``root/jobs/<id>/`` holds the checkpoint, ``progress.jsonl`` (the loss curve and the
    quality watch's points) and ``worker.log``. A cancel is a flag file the worker checks between steps.
    """

    def __init__(self, root, limits: JobLimits | None = None):
        self.root = Path(root)
        (self.root / "jobs").mkdir(parents=True, exist_ok=True)
        self.limits = limits or JobLimits()
        self._procs: dict = {}
        self._lock = threading.Lock()

    def _store(self):
        from backend.runs.store import Store

        return Store(self.root)

    def job_dir(self, job_id: str):
        if not isinstance(job_id, str) or not job_id or "/" in job_id or job_id.startswith("."):
            raise ValueError(f"unknown job {job_id!r}")
        return self.root / "jobs" / job_id

    # ---- starting

    def validate(self, kind: str, model: str, settings: dict | None):
        """The job's config; ValueError naming the first setting this server refuses."""
        cls = job_config_class(kind)
        cfg = cls.from_dict(settings or {})  # an unknown key is refused, never dropped
        if kind == "rg-lcd" and getattr(cfg, "reward", "none") == "none":
            raise ValueError("rg-lcd needs a reward model; allowed: shapes, clip")
        minutes = float(getattr(cfg, "minutes", 0) or 0)
        if not 0 < minutes <= self.limits.max_minutes:
            raise ValueError(f"minutes: {minutes:g} is not allowed here; allowed: above 0 up to "
                             f"{self.limits.max_minutes:g} (python -m app --max-job-minutes)")
        data = getattr(cfg, "data", None)
        if isinstance(data, str):
            self._check_data(data)
        return cfg

    def _check_data(self, data: str) -> None:
        path = data.split(":", 1)[1] if data.startswith("teacher:") else None
        if data in ("auto", "shapes", "teacher"):
            return
        path = Path(path if path is not None else data).expanduser().resolve()
        roots = [Path(r).expanduser().resolve() for r in (self.root, *self.limits.data_roots)]
        if not any(path == r or r in path.parents for r in roots):
            raise ValueError(f"data: {str(path)!r} is outside the folders this server reads; allowed: auto, shapes, "
                             f"teacher, or a path under {', '.join(map(str, roots))} (python -m app --data-root)")

    def start(self, kind: str, model: str, settings: dict | None = None, threads: int = 1) -> str:
        """Validate, record the job (status queued, "starting worker"), launch its worker; returns the id."""

        from backend.models import load_pipeline

        cfg = self.validate(kind, model, settings)
        load_pipeline(model)  # ModelError now, not in the worker
        with self._lock:
            running = [j for j in self.jobs() if j["status"] in ACTIVE]
            if len(running) >= self.limits.max_running:
                raise ValueError(f"{len(running)} fine-tune(s) running; allowed: {self.limits.max_running} at a time "
                                 "(cancel one, or wait until it ends)")
            job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
            d = self.job_dir(job_id)
            d.mkdir(parents=True)
            params = {"model": model, "settings": cfg.to_dict(), "threads": int(threads),
                      "section": registry.finetune(kind)[0].section}
            with self._store() as store:
                store.create_job(kind, params, out_dir=str(d / "checkpoint"), job_id=job_id, status="queued")
                store.update_job(job_id, progress={"phase": STARTING})
            self._launch(job_id)
        return job_id

    def _launch(self, job_id: str) -> None:
        d = self.job_dir(job_id)
        FileFlag(d / "cancel").clear()
        with open(d / "worker.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "backend.runs.job_worker", str(self.root), job_id],
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                    cwd=str(Path(__file__).resolve().parents[2]))
        self._procs[job_id] = proc
        with self._store() as store:
            store.update_job(job_id, pid=proc.pid)

    def resumable(self, job: dict) -> bool:
        out = Path(job["checkpoint"])
        return job["status"] in ("cancelled", "failed") and (
            out.with_name(out.name + ".partial").is_dir() or (out / "train_state.safetensors").is_file())

    def resume(self, job_id: str) -> dict:
        """Relaunch a cancelled or failed job that left a checkpoint; it continues from there."""
        with self._lock:
            job = self.get(job_id)
            if not self.resumable(job):
                raise ValueError(f"job {job_id} cannot be resumed: it is {job['status']} and left no partial "
                                 "checkpoint; allowed: a cancelled or failed job with one")
            if len([j for j in self.jobs() if j["status"] in ACTIVE]) >= self.limits.max_running:
                raise ValueError(f"allowed: {self.limits.max_running} fine-tune(s) at a time; one is running")
            with self._store() as store:
                store.update_job(job_id, status="queued", error="", progress={"phase": STARTING})
            self._launch(job_id)
        return self.get(job_id)

    # ---- reading

    def _alive(self, job: dict) -> bool:
        proc = self._procs.get(job["id"])
        if proc is not None:
            return proc.poll() is None
        if job.get("pid"):
            return pid_alive(job["pid"])
        return True  # recorded, pid not written yet: its launcher is still starting it

    def _reap(self) -> None:
        """Collect the exit status of this service's ended workers (no zombie processes left behind)."""
        for job_id, proc in list(self._procs.items()):
            if proc.poll() is not None:
                del self._procs[job_id]

    def get(self, job_id: str) -> dict:
        """The job as the UI shows it: id, kind, model, settings, status, phase, step, loss, eta_s, error and the
        quality watch's latest warning."""

        self.job_dir(job_id)
        self._reap()
        with self._store() as store:
            row = store.job(job_id)
            if row["status"] in ACTIVE and not self._alive(row):
                row = store.job(job_id)  # the worker may have written its final state as it exited
                if row["status"] in ACTIVE:
                    cancelled = FileFlag(self.job_dir(job_id) / "cancel").is_set()
                    store.update_job(job_id, status="cancelled" if cancelled else "failed",
                                     error=None if cancelled else "the worker process ended without a final "
                                     "state; see worker.log")
                    row = store.job(job_id)
        params, progress = row["params"], row["progress"]
        job = {"id": row["id"], "kind": row["kind"], "model": params.get("model"),
               "settings": params.get("settings", {}), "section": params.get("section"), "status": row["status"],
               "checkpoint": row["out_dir"],
               "pid": row["pid"], "error": row["error"] or None, "created": row["created"],
               "phase": progress.get("phase"), "step": progress.get("step"), "total": progress.get("total"),
               "loss": progress.get("loss"), "summary": progress.get("summary"), "warning": progress.get("warning"),
               "cancel_requested": FileFlag(self.job_dir(job_id) / "cancel").is_set()}
        job["eta_s"] = eta_s(row["status"], progress, job["settings"], time.time() - row["updated"])
        return job

    def jobs(self) -> list[dict]:
        """Every fine-tune job, newest first."""
        with self._store() as store:
            ids = [j["id"] for j in store.jobs() if j["kind"] in registry.finetunes()]
        return [self.get(i) for i in ids]

    def _rows(self, job_id: str) -> list[dict]:
        path = self.job_dir(job_id) / "progress.jsonl"
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the line being written
        return rows

    def progress(self, job_id: str) -> list[dict]:
        """The job's progress reports (step, loss, ...), in order."""
        rows = [r for r in self._rows(job_id) if "watch" not in r]
        for row in rows:
            if "loss" not in row and "distill" in row:
                row["loss"] = row["distill"]
        return rows

    def quality_watch(self, job_id: str) -> list[dict]:
        """The quality watch's points (minutes, iters, loss, prompt_accuracy, fp_prompt_accuracy) by iteration, the
        PTQ start (iteration 0) first, one per iteration (a resumed job judges its start again); [] without a watch."""
        points = {r["watch"]["iters"]: r["watch"] for r in self._rows(job_id) if "watch" in r}
        return [points[i] for i in sorted(points)]

    def cancel(self, job_id: str) -> dict:
        """Cooperative cancel: the trainer saves a checkpoint and stops; a worker still starting up is ended."""

        job = self.get(job_id)
        FileFlag(self.job_dir(job_id) / "cancel").set()
        if job["status"] == "queued" and job.get("pid"):
            try:
                os.killpg(int(job["pid"]), signal.SIGTERM)  # its own session: the worker and its children
            except (ProcessLookupError, PermissionError):
                pass
        return self.get(job_id)

    def wait(self, job_id: str, timeout: float = 60.0) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            job = self.get(job_id)
            if job["status"] not in ACTIVE:
                return job
            time.sleep(0.25)
        return self.get(job_id)

    def checkpoints(self, model: str | None = None, section: str | None = None) -> list[dict]:
        """Finished checkpoints (label, section, path, model, kind), newest first; of one model when given."""

        out = []
        for job in self.jobs():
            if job["status"] != "done" or not Path(job["checkpoint"]).is_dir():
                continue
            if (model is not None and job["model"] != model) or (section is not None and job["section"] != section):
                continue
            out.append({"label": f"{job['kind']} {job['id']} ({job['model']})", "section": job["section"],
                        "path": job["checkpoint"], "model": job["model"], "kind": job["kind"]})
        return out


def eta_s(status: str, progress: dict, settings: dict, since_update_s: float = 0.0) -> float | None:
    """Seconds left: 0 when ended; None before the first measured step; from the measured step time when the
    job has a step limit, else the time budget left as the trainer reported it."""
    if status not in ACTIVE:
        return 0.0
    step, total = progress.get("step"), progress.get("total")
    if not step:
        return None
    if total:
        elapsed = progress.get("train_s") or (progress.get("minutes") or 0) * 60 or progress.get("elapsed_s") or 0
        return round(max(0.0, (total - step) * elapsed / step - since_update_s), 1)
    if progress.get("eta_s") is not None:
        return round(max(0.0, progress["eta_s"] - since_update_s), 1)
    return None
