"""The Fine-tune tab's handlers: start (the job id at once, "starting worker"), follow, cancel and resume jobs
of backend.runs.jobs.JobService. The tab polls only while a job runs and the tab is open. A job with a quality
watch shows its judged accuracy beside the loss, with the FP model and the PTQ start as references."""

from __future__ import annotations

import json
from typing import Any

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from app.controls import coerce
from backend.runs import knobs
from backend.runs.jobs import ACTIVE, JobService


def form_kinds() -> list[str]:
    """The kinds that own a settings form, in the order the tab lays them out (rg-lcd shares lcd's)."""
    return list(dict.fromkeys(knobs.finetune_forms().values()))


def _error(exc: BaseException) -> gr.Error:
    return gr.Error(str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}")


def accuracy_figure(points: list[dict], minutes: float | None) -> go.Figure:
    """The quality watch's points: the fine-tune's judged accuracy by minute of training, with the FP model's and
    the PTQ start's accuracy as flat references across the job's budget."""
    end = max([p["minutes"] for p in points] + [float(minutes or 0)])
    fig = go.Figure()
    for name, value, line in (("FP model", points[0]["fp_prompt_accuracy"], {"dash": "dash", "color": "grey"}),
                              ("PTQ start", points[0]["prompt_accuracy"], {"dash": "dot", "color": "#d62728"})):
        fig.add_trace(go.Scatter(x=[0.0, end], y=[value, value], mode="lines", name=name, line=line,
                                 hovertemplate=f"{name}: {value:.2f}<extra></extra>"))
    # error bars: each point's paired 95% interval against the PTQ start (same prompts and seeds)
    cis = [(p.get("vs_start") or {}).get("ci") or [0.0, 0.0] for p in points]
    deltas = [(p.get("vs_start") or {}).get("delta", 0.0) for p in points]
    fig.add_trace(go.Scatter(x=[p["minutes"] for p in points], y=[p["prompt_accuracy"] for p in points],
                             mode="lines+markers", name="fine-tune",
                             line={"color": "#1f77b4"}, marker={"size": 9},
                             error_y={"type": "data", "symmetric": False,
                                      "array": [hi - d for (_, hi), d in zip(cis, deltas, strict=True)],
                                      "arrayminus": [d - lo for (lo, _), d in zip(cis, deltas, strict=True)]},
                             hovertext=[f"{p['iters']} iterations, accuracy {p['prompt_accuracy']:.2f}"
                                        + (f" ({p['vs_start']['verdict']} vs the PTQ start)" if p.get("vs_start")
                                           else "")
                                        + (f", loss {p['loss']:.4g}" if p.get("loss") is not None else "")
                                        for p in points], hoverinfo="text"))
    fig.update_layout(title="judged accuracy (hard prompts; bars: paired 95% interval vs the PTQ start)",
                      xaxis_title="minutes of training",
                      yaxis_title="prompt accuracy", yaxis_range=[0, 1.05], height=320,
                      margin={"t": 40, "l": 60, "r": 20, "b": 40}, legend={"orientation": "h", "y": -0.3, "x": 0})
    return fig


class FinetuneCallbacks:
    def __init__(self, jobs: JobService):
        self.jobs = jobs

    def kind_changed(self, kind: str, preset_name: str):
        """Show the settings of the kind and fill them from the preset."""
        values = knobs.preset(kind, preset_name)
        form = knobs.finetune_forms()[kind]
        out = [gr.update(visible=k == form) for k in form_kinds()]
        for k in form_kinds():
            out += [gr.update(value=values[p["name"]]) if k == form else gr.skip() for p in knobs.job_params(k)]
        return out

    def start(self, kind: str, model: str, *values: Any):
        """Start a fine-tune from the form (values: every setting of each form, in form_kinds() order): the job id,
        its state and the timer on."""
        try:
            form = knobs.finetune_forms()[kind]
        except KeyError:
            raise gr.Error(f"fine-tune kind {kind!r} is not allowed; allowed: {', '.join(knobs.finetune_kinds())}"
                           ) from None
        values, start = list(values), 0
        for k in form_kinds():
            params = knobs.job_params(k)
            if k == form:
                break
            start += len(params)
        settings = {p["name"]: coerce(p, v) for p, v in zip(params, values[start:start + len(params)], strict=True)}
        try:
            job_id = self.jobs.start(kind, model, settings)
        except Exception as exc:
            raise _error(exc) from exc
        return (self.choices(job_id), job_id, self.status_line(self.jobs.get(job_id)), gr.Timer(active=True))

    def api_start(self, kind: str, preset: str, model: str, settings_json: str = "{}") -> str:
        """API: start a fine-tune from a preset with optional overrides (JSON object); returns the job id."""
        try:
            overrides = json.loads(settings_json or "{}")
            if not isinstance(overrides, dict):
                raise ValueError(f"settings: expected a JSON object, got {settings_json!r}")
            return self.jobs.start(kind, model, {**knobs.preset(kind, preset), **overrides})
        except json.JSONDecodeError as exc:
            raise gr.Error(f"settings: malformed JSON ({exc.msg})") from exc
        except Exception as exc:
            raise _error(exc) from exc

    def api_job(self, job_id: str) -> dict:
        """API: a job's state (status, phase, step, loss, eta_s, checkpoint, error)."""
        try:
            return self.jobs.get(job_id)
        except Exception as exc:
            raise _error(exc) from exc

    def choices(self, selected: str | None = None):
        ids = [j["id"] for j in self.jobs.jobs()]
        return gr.update(choices=ids, value=selected if selected in ids else (ids[0] if ids else None))

    def cancel(self, job_id: str | None) -> str:
        if not job_id:
            return "Select a job first."
        try:
            job = self.jobs.cancel(job_id)
        except Exception as exc:
            raise _error(exc) from exc
        return f"Cancel requested for {job_id} (now {job['status']}); it saves a checkpoint and stops."

    def resume(self, job_id: str | None):
        if not job_id:
            raise gr.Error("Select a job first.")
        try:
            job = self.jobs.resume(job_id)
        except Exception as exc:
            raise _error(exc) from exc
        return self.status_line(job), gr.Timer(active=True)

    def status_line(self, job: dict) -> str:
        line = f"**{job['id']}** · {job['kind']} on {job['model']} — **{job['status']}**"
        if job["status"] in ACTIVE and job.get("cancel_requested"):  # said until the worker has stopped
            line += " — **cancel requested**: it stops within seconds, keeping a checkpoint of the steps made"
        elif job["status"] in ACTIVE:
            if job.get("step"):
                line += f", step {job['step']}" + (f"/{job['total']}" if job.get("total") else "")
                line += f", loss {job['loss']:.4g}" if isinstance(job.get("loss"), (int, float)) else ""
                if job.get("phase") in (None, "training"):
                    line += f", ETA {job['eta_s']:.0f} s" if job.get("eta_s") is not None else ""
                else:
                    line += f" ({job['phase']})"
            else:
                line += f" ({job.get('phase') or 'starting worker'}; ETA once the first steps are timed)"
        if job.get("warning"):
            line += f"\n\n**Quality watch {job['warning']}**"
        if job.get("error"):
            line += f"\n\nError: {job['error']}"
        if job["status"] == "done":
            line += f"\n\nCheckpoint: `{job['checkpoint']}` (selectable in the Playground)"
        elif self.jobs.resumable(job):
            line += "\n\nA partial checkpoint is kept: **Resume** continues from it."
        return line

    def table(self, jobs: list[dict]) -> pd.DataFrame:
        cols = ["id", "kind", "model", "status", "step", "loss", "eta_s"]
        return pd.DataFrame([{c: j.get(c) for c in cols} for j in jobs], columns=cols)

    def view(self, job_id: str | None):
        """The selected job's loss curve and judged-accuracy curve (each hidden until it has points) and status
        line."""
        hidden = gr.update(visible=False)
        if not job_id:
            return hidden, hidden, "No job selected."
        try:
            job = self.jobs.get(job_id)
        except ValueError:
            return hidden, hidden, f"Job {job_id} not found."
        points = [r for r in self.jobs.progress(job_id) if isinstance(r.get("loss"), (int, float))]
        loss = hidden if not points else gr.update(
            value=pd.DataFrame({"step": [r["step"] for r in points], "loss": [float(r["loss"]) for r in points]}),
            visible=True)
        watch = self.jobs.quality_watch(job_id)
        accuracy = hidden if not watch else gr.update(value=accuracy_figure(watch, job["settings"].get("minutes")),
                                                      visible=True)
        return loss, accuracy, self.status_line(job)

    def poll(self, job_id: str | None):
        """Timer tick: jobs table, the selected job's view; the timer stops once no job is active."""
        jobs = self.jobs.jobs()
        loss, accuracy, line = self.view(job_id)
        active = any(j["status"] in ACTIVE for j in jobs)
        return self.table(jobs), loss, accuracy, line, gr.Timer(active=active)

    def tab_opened(self, job_id: str | None):
        """The tab is shown: refresh once, showing the selected job or else the newest (after a restart), and poll
        while a job is active."""
        choices = self.choices(job_id)
        return (*self.poll(choices["value"]), choices)

    @staticmethod
    def tab_closed():
        return gr.Timer(active=False)


__all__ = ["FinetuneCallbacks", "accuracy_figure", "form_kinds"]
