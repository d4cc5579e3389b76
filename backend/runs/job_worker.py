"""The worker process of a fine-tune job: ``python -m backend.runs.job_worker STORE JOB_ID``.

It reads the job from the results store at STORE, trains (resuming from the job's checkpoint when one is
there), appends every progress report to ``jobs/<id>/progress.jsonl`` and writes its state (running, then
done / cancelled / failed with the error) to the store. A traceback goes to ``worker.log``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from backend.core import JobCancelled, JobControl, jsonable
from backend.runs.jobs import FileFlag
from backend.runs.store import Store

PROGRESS_EVERY_S = 1.0  # how often the latest progress is written to the store


def run(root: Path, job_id: str) -> int:
    import torch

    store = Store(root)
    job = store.job(job_id)
    params = job["params"]
    torch.set_num_threads(max(1, int(params.get("threads", 1))))
    job_dir = root / "jobs" / job_id
    flag = FileFlag(job_dir / "cancel")
    last = [0.0]
    latest: dict = {}  # the newest report, written with the final state even when the throttle skipped it

    with (job_dir / "progress.jsonl").open("a") as log:
        def on_progress(fields: dict) -> None:
            log.write(json.dumps(jsonable(fields)) + "\n")
            log.flush()
            latest.clear()
            latest.update({k: v for k, v in fields.items() if isinstance(v, (int, float, str)) or v is None})
            latest.setdefault("loss", fields.get("distill"))
            if time.monotonic() - last[0] >= PROGRESS_EVERY_S:
                last[0] = time.monotonic()
                store.update_job(job_id, progress=latest)

        try:
            from backend.models import load_pipeline

            store.update_job(job_id, status="running", pid=os.getpid(), progress={"phase": "loading the model"})
            pipe = load_pipeline(params["model"])
            if flag.is_set():
                raise JobCancelled("cancelled before training started")
            store.update_job(job_id, progress={"phase": "training"})
            control = JobControl(on_progress=on_progress, cancel=flag)
            out = Path(job["out_dir"])
            if job["kind"] == "efficientdm":
                from backend.methods.quant.config import FinetuneConfig
                from backend.methods.quant.train import finetune

                summary = finetune(pipe, FinetuneConfig.from_dict(params["settings"]), out, job=control)
                summary.pop("student", None)
            else:
                from backend.methods.consistency.config import DistillConfig
                from backend.methods.consistency.distill import distill

                summary = distill(pipe, DistillConfig.from_dict(params["settings"]), out, control)
            status = "cancelled" if summary.get("status") == "cancelled" else "done"
            summary = json.loads(json.dumps(jsonable(summary), default=str))
            store.update_job(job_id, status=status, progress={**latest, "phase": status, "summary": summary})
            return 0
        except BaseException as exc:  # the UI shows why; the traceback is in worker.log
            traceback.print_exc()
            cancelled = flag.is_set()
            store.update_job(job_id, status="cancelled" if cancelled else "failed",
                             error=None if cancelled else f"{type(exc).__name__}: {exc}",
                             progress={**latest, "phase": "cancelled" if cancelled else "failed"})
            return 1
        finally:
            store.close()


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1]), sys.argv[2]))
