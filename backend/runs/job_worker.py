"""The worker process of a fine-tune job: ``python -m backend.runs.job_worker STORE JOB_ID``.

It reads the job from the results store at STORE, trains (resuming from the job's checkpoint when one is
there), appends every progress report to ``jobs/<id>/progress.jsonl`` and writes its state (running, then
done / cancelled / failed with the error) to the store. A traceback goes to ``worker.log``.

The job's kind names its fine-tune in the registry (backend.methods.registry): its settings class, its ``train``
function and, when it has one, its ``watch`` (EfficientDM's judged-quality watch, :mod:`backend.methods.quant.watch`:
the references judged before training, the student every ``watch.every_s`` seconds of training, not counting the
watch's own time, and once more at the end). Each point is a ``{"watch": point}`` row of ``progress.jsonl``; the
latest warning is the job's ``warning``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import IO

from backend.core import JobCancelled, JobControl, jsonable
from backend.runs.jobs import FileFlag
from backend.runs.store import Store

PROGRESS_EVERY_S = 1.0  # how often the latest progress is written to the store


class JobLog:
    """Where a worker writes: ``progress.jsonl`` rows, and the job's progress in the store (the newest report,
    at most every PROGRESS_EVERY_S; the phase; the warning)."""

    def __init__(self, store: Store, job_id: str, file: IO[str]):
        self.store, self.job_id, self.file = store, job_id, file
        self.latest: dict = {}  # the newest report, written with the final state even when the throttle skipped it
        self._last = 0.0

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(jsonable(row)) + "\n")
        self.file.flush()

    def report(self, fields: dict) -> None:
        """``JobControl.on_progress``: every report a row, the newest in the store."""
        self.write(fields)
        self.latest = {k: v for k, v in fields.items() if isinstance(v, (int, float, str)) or v is None}
        self.latest.setdefault("loss", fields.get("distill"))
        if time.monotonic() - self._last >= PROGRESS_EVERY_S:
            self._last = time.monotonic()
            self.store.update_job(self.job_id, progress=self.latest)

    def phase(self, text: str) -> None:
        self.store.update_job(self.job_id, progress={**self.latest, "phase": text})

    def warn(self, text: str) -> None:
        self.store.update_job(self.job_id, progress={"warning": text})


class WatchRecorder:
    """A quality watch as ``finetune``'s ``on_eval``: after each evaluation its new points become
    ``{"watch": point}`` rows of the log and a new warning the job's warning."""

    def __init__(self, watch, log: JobLog):
        self.watch, self.log = watch, log
        self._points = self._warnings = 0
        self.flush()  # the references judged before training

    def flush(self) -> None:
        for point in self.watch.curve[self._points:]:
            self.log.write({"watch": point})
        for text in self.watch.warnings[self._warnings:]:
            self.log.warn(text)
        self._points, self._warnings = len(self.watch.curve), len(self.watch.warnings)

    def __call__(self, student, train_s: float, iters: int) -> bool:
        stop = self.watch(student, train_s, iters)
        self.flush()
        return stop

    def final(self, student, train_s: float, iters: int) -> None:
        """Judge the finished student unless the last evaluation was at its last iteration."""
        if self.watch.curve[-1]["iters"] != iters:
            self(student, train_s, iters)


def run_finetune(kind: str, pipe, settings: dict, out: Path, control: JobControl, log: JobLog) -> dict:
    """The registry's fine-tune of this kind on ``pipe``, with its watch when it has one that applies."""
    from backend.methods import registry
    from backend.sampling import seeded_sampler

    _, ft = registry.finetune(kind)
    config = registry.resolve(ft.config).from_dict(settings)
    train = registry.resolve(ft.train)
    watch = None
    if ft.watch is not None:
        log.phase("quality watch: judging the references before training")
        watch = registry.resolve(ft.watch)(pipe, config, seeded_sampler(pipe))
    log.phase("training")
    if watch is None:
        return train(pipe, config, out, job=control)
    recorder = WatchRecorder(watch, log)

    def observed(fields: dict) -> None:
        control.on_progress(fields)
        watch.observe(fields)

    summary = train(pipe, config, out, job=dataclasses.replace(control, on_progress=observed), on_eval=recorder,
                    eval_every_s=watch.every_s)
    if summary["status"] == "done":
        log.phase("quality watch: judging the fine-tuned model")
        recorder.final(summary["student"], summary["elapsed_s"], summary["iters"])
    return summary


def run(root: Path, job_id: str) -> int:
    import torch

    store = Store(root)
    job = store.job(job_id)
    params = job["params"]
    torch.set_num_threads(max(1, int(params.get("threads", 1))))
    job_dir = root / "jobs" / job_id
    flag = FileFlag(job_dir / "cancel")

    with (job_dir / "progress.jsonl").open("a") as file:
        log = JobLog(store, job_id, file)
        try:
            from backend.models import load_pipeline

            store.update_job(job_id, status="running", pid=os.getpid(), progress={"phase": "loading the model"})
            pipe = load_pipeline(params["model"])
            if flag.is_set():
                raise JobCancelled("cancelled before training started")
            store.update_job(job_id, progress={"phase": "training"})
            control = JobControl(on_progress=log.report, cancel=flag)
            out = Path(job["out_dir"])
            summary = run_finetune(job["kind"], pipe, params["settings"], out, control, log)
            summary.pop("student", None)
            status = "cancelled" if summary.get("status") == "cancelled" else "done"
            summary = json.loads(json.dumps(jsonable(summary), default=str))
            store.update_job(job_id, status=status, progress={**log.latest, "phase": status, "summary": summary})
            return 0
        except BaseException as exc:  # the UI shows why; the traceback is in worker.log
            traceback.print_exc()
            cancelled = flag.is_set()
            store.update_job(job_id, status="cancelled" if cancelled else "failed",
                             error=None if cancelled else f"{type(exc).__name__}: {exc}",
                             progress={**log.latest, "phase": "cancelled" if cancelled else "failed"})
            return 1
        finally:
            store.close()


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1]), sys.argv[2]))
