"""Small helpers shared by every layer of the library (no imports from the rest of backend): JSON-safe values,
job control and the error of a model that cannot be loaded.

Long work (fine-tunes, sweeps) runs as a job: a training loop takes a :class:`JobControl`, calls
``job.report(step=..., loss=...)`` every step and ``job.check()`` where stopping is safe (it raises
:class:`JobCancelled`, after which the loop saves a checkpoint and returns). Whoever runs the job (CLI progress
bar, UI worker process, results store) passes ``on_progress`` and sets ``cancel`` (any object with ``is_set()``:
a threading or multiprocessing Event, a flag file).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class ModelError(ValueError):
    """A model source that cannot be loaded; the message names it and what is allowed (backend.models raises it)."""


def jsonable(value):
    """JSON-safe copy: infinities become the strings "inf" / "-inf" (PSNR of identical images), NaN null."""
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


class JobCancelled(Exception):
    """Raised by JobControl.check() once cancel is set."""


class _Flag(Protocol):
    def is_set(self) -> bool: ...


@dataclass
class JobControl:
    on_progress: Callable[[dict], None] | None = None
    cancel: _Flag | None = None
    budget_s: float | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def out_of_time(self) -> bool:
        return self.budget_s is not None and self.elapsed_s >= self.budget_s

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise JobCancelled("cancelled")

    def report(self, **fields: Any) -> None:
        """Send progress (step, total, loss, ...) with elapsed seconds and an ETA from the budget or total."""
        fields.setdefault("elapsed_s", round(self.elapsed_s, 2))
        if "eta_s" not in fields:
            if self.budget_s is not None:
                fields["eta_s"] = round(max(0.0, self.budget_s - self.elapsed_s), 1)
            elif fields.get("total") and fields.get("step"):
                fields["eta_s"] = round(self.elapsed_s * (fields["total"] / fields["step"] - 1), 1)
        if self.on_progress is not None:
            self.on_progress(fields)
