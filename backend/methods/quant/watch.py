"""A judged-quality watch for fine-tunes: the distillation loss can fall while what the model draws gets worse
(with every layer at 4 bits, 10 min of EfficientDM on shapes-sd raised PSNR vs FP but dropped prompt accuracy
0.98 → 0.75), so a fine-tune that only shows its loss can mislead.

:class:`QualityWatch` is an ``on_eval`` callback of :func:`backend.methods.quant.train.finetune` (and an
``on_progress`` listener, for the loss): every evaluation it samples a few fixed prompts of the ``hard`` set with
the student, judges them, keeps a curve (minutes, iterations, loss, prompt accuracy; the FP model's accuracy on
the same prompts and seeds beside it) and warns when the accuracy is at least ``drop_points`` below the
reference's, paired per prompt, while the loss is lower than it was then. The reference is the fine-tune's PTQ
start when ``start_unet`` is given (at 0 minutes, with the loss the job reports after ``settle_iters`` iterations:
the loss is a running mean over trajectory steps whose losses differ by timestep, so the first iterations alone
are no reference), else the first evaluation.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable

import numpy as np

from backend.models import denoiser, set_denoiser

logger = logging.getLogger(__name__)


Sampler = Callable[[object, list[str], list[int]], np.ndarray]


class QualityWatch:
    """``sample(pipe, prompts, seeds) -> images`` draws the judged images (the caller's seeded sampling: the
    watch, like every method, receives what it needs rather than reaching up for the Variant)."""

    def __init__(self, pipe, sample: Sampler, n: int = 16, prompt_set: str = "hard", seed: int = 0,
                 drop_points: float = 10.0, start_unet=None, settle_iters: int = 1, every_s: float | None = None):
        from backend.metrics import quality
        from backend.world.prompts import eval_prompts

        quality.require_quality_model(pipe)
        self.pipe, self.sample, self.drop_points, self.settle_iters = pipe, sample, drop_points, settle_iters
        self.every_s = every_s  # seconds of training between evaluations, for whoever runs the fine-tune
        self.prompts = eval_prompts(prompt_set, n)
        self.seeds = [seed + i for i in range(n)]
        self.fp_accuracy = float(self._verdicts(denoiser(pipe)).mean())
        self.curve: list[dict] = []
        self.warnings: list[str] = []
        self.loss: float | None = None
        self._first: tuple[np.ndarray, float | None] | None = None
        if start_unet is not None:
            verdicts = self._verdicts(start_unet)
            self._first = (verdicts, None)
            self.curve.append({"minutes": 0.0, "iters": 0, "loss": None, "prompt_accuracy": float(verdicts.mean()),
                               "fp_prompt_accuracy": self.fp_accuracy})

    def _verdicts(self, unet) -> np.ndarray:
        from backend.metrics import quality

        pipe = copy.copy(self.pipe)
        set_denoiser(pipe, unet)
        images = self.sample(pipe, self.prompts, self.seeds)
        return quality.judge_verdicts(quality.as_8bit(images), self.prompts)["prompt"]

    def observe(self, fields: dict) -> None:
        """``JobControl`` progress listener: remembers the latest (smoothed) training loss."""
        if fields.get("loss") is not None:
            self.loss = float(fields["loss"])
            if self._first is not None and self._first[1] is None and fields.get("step", 0) >= self.settle_iters:
                self._first = (self._first[0], self.loss)
                self.curve[0]["loss"] = self.loss

    def __call__(self, student, train_s: float, iters: int) -> bool:
        from backend.metrics.paired import paired_delta

        verdicts = self._verdicts(student)
        point = {"minutes": round(train_s / 60, 3), "iters": iters, "loss": self.loss,
                 "prompt_accuracy": float(verdicts.mean()), "fp_prompt_accuracy": self.fp_accuracy}
        self.curve.append(point)
        if self._first is None:
            self._first = (verdicts, self.loss)
            return False
        first, first_loss = self._first
        delta = paired_delta(verdicts, first, unit=" points", scale=100)
        point["vs_start"] = delta  # paired per prompt against the PTQ start, with its bootstrap interval
        if delta["delta"] * 100 <= -self.drop_points and None not in (self.loss, first_loss) \
                and self.loss < first_loss:
            text = (f"warning: judged quality fell while the loss fell: prompt accuracy on {len(self.prompts)} hard "
                    f"prompts {self.curve[0]['prompt_accuracy']:.2f} → {point['prompt_accuracy']:.2f} "
                    f"({delta['verdict']}), loss {first_loss:.4g} → {self.loss:.4g}, at {point['minutes']} min; "
                    f"the FP model scores {self.fp_accuracy:.2f} there")
            self.warnings.append(text)
            logger.warning("%s", text)
        return False


JOB_WATCH_EVERY_MIN = 2.0  # the workbench's EfficientDM jobs: minutes of training between evaluations,
JOB_WATCH_N = 16  # and the hard prompts each evaluation judges (the CLI's defaults)


def make_watch(pipe, sample: Sampler, every_minutes: float, n: int, start=None, settle_iters: int = 1):
    """A QualityWatch for Shapes-world models with real weights when ``every_minutes`` > 0, else None; with
    ``start`` (a QuantConfig), its reference is the PTQ model of that config (the fine-tune's starting point)."""
    from backend.models import has_shapes_judge, is_random_weights

    if every_minutes < 0:
        raise ValueError(f"--watch-every {every_minutes} is out of range; allowed: minutes ≥ 0 (0: off)")
    if not every_minutes or is_random_weights(pipe) or not has_shapes_judge(pipe):
        return None
    from backend.methods.quant import ptq

    start_unet = None
    if start is not None:
        ptq_pipe = copy.copy(pipe)
        set_denoiser(ptq_pipe, copy.deepcopy(denoiser(pipe)))
        ptq(ptq_pipe, start)
        start_unet = denoiser(ptq_pipe).eval()
    return QualityWatch(pipe, sample, n, start_unet=start_unet, settle_iters=settle_iters,
                        every_s=every_minutes * 60)


@dataclasses.dataclass(frozen=True)
class JobWatch:
    """A job's watch, built by ``make()`` at its first evaluation (judging the references takes about a minute, so
    training starts first); evaluations every ``every_s`` seconds of training, past ``settle_iters`` iterations."""

    every_s: float
    settle_iters: int
    make: Callable[[], QualityWatch | None]


def job_watch(pipe, ft, sample: Sampler) -> JobWatch:
    """The registry's ``watch`` of the EfficientDM fine-tune: what the workbench's job runs beside training."""
    return JobWatch(JOB_WATCH_EVERY_MIN * 60, ft.train_steps,
                    lambda: make_watch(pipe, sample, JOB_WATCH_EVERY_MIN, JOB_WATCH_N, ft.quant_config(),
                                       settle_iters=ft.train_steps))
