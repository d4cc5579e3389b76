"""The workbench's event handlers: each turns control values into one backend call and its result into
component updates. No method logic here: variants are plain data, everything else is backend.runs.workbench.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from app.controls import checkpoint_choices, coerce
from backend.runs import workbench as wb

log = logging.getLogger("speedlab.app")
N_COLUMNS = wb.MAX_VARIANTS + 1  # the baseline and up to 4 variants
SECTIONS = ("deepcache", "quant", "consistency")
VARIANT_PARAMS = [  # top-level Variant knobs a sweep can move
    {"name": "steps", "type": "int", "default": 25, "minimum": 1, "maximum": 200, "help": "denoising steps"},
    {"name": "guidance", "type": "float", "default": 5.0, "minimum": 0.0, "maximum": 20.0, "help": "CFG scale"},
]


def user_error(exc: BaseException) -> gr.Error:
    """A visible message for a backend error: ValueErrors carry one line naming the bad value."""
    if isinstance(exc, ValueError):
        return gr.Error(str(exc))
    log.exception("unexpected error", exc_info=exc)
    return gr.Error(f"{type(exc).__name__}: {exc}")


class Callbacks:
    """State shared by every browser session: the store folder, fine-tune jobs, per-session cancel flags."""

    def __init__(self, model: str = "shapes", store: str | Path = "runs/workbench"):
        self.model = model
        self.store = Path(store)
        self.store.mkdir(parents=True, exist_ok=True)
        self.jobs = wb.JobManager(self.store)
        self.params = wb.all_method_params()
        self._cancel: dict[str, threading.Event] = {}

    # -------------------------------------------------------------------------------- playground

    def columns_layout(self) -> list[tuple[str, list[dict]]]:
        """(section, declared params) of each method block in a variant column."""
        return [(s, self.params[s]) for s in SECTIONS if s in self.params]

    def collect_variants(self, *values: Any) -> str:
        """Control values, column by column, → the baseline and enabled variants as JSON.

        Per column: enabled, name, scheduler, steps, guidance, then per method section: on, *params.
        """
        values = list(values)
        variants = []
        for col in range(N_COLUMNS):
            enabled, name, scheduler, steps, guidance = values[:5]
            del values[:5]
            v: dict[str, Any] = {"name": name or ("baseline" if col == 0 else f"variant {col}"),
                                 "steps": int(steps), "guidance": float(guidance)}
            if scheduler and scheduler != "default":
                v["scheduler"] = scheduler
            for section, params in self.columns_layout():
                if col == 0:
                    continue
                on = values.pop(0)
                raw = values[:len(params)]
                del values[:len(params)]
                if on:
                    v[section] = {p["name"]: coerce(p, x) for p, x in zip(params, raw, strict=True)}
            if col == 0 or enabled:
                variants.append(v)
        return json.dumps(variants)

    def generate(self, prompt: str, seed: float, model: str, variants_json: str,
                 request: gr.Request = None, progress=gr.Progress()):
        """One generation per column with the same seed; outputs: N images, N captions, results JSON, status."""
        try:
            variants = json.loads(variants_json) if isinstance(variants_json, str) else variants_json
        except json.JSONDecodeError as exc:
            raise gr.Error(f"variants: malformed JSON ({exc.msg})") from exc
        cancel = threading.Event()
        key = getattr(request, "session_hash", None) or "default"
        self._cancel[key] = cancel
        progress(0, desc="queued for the device")

        def on_step(done: int, total: int, name: str) -> None:
            progress((done, total), desc=f"{name}: denoising")

        try:
            rows = wb.compare(prompt, int(seed or 0), variants, model or self.model, on_step=on_step, cancel=cancel)
        except wb.GenerationCancelled as exc:
            return (*[gr.skip()] * (2 * N_COLUMNS), gr.skip(), f"**Cancelled** ({exc}).", gr.skip())
        except Exception as exc:
            raise user_error(exc) from exc
        finally:
            if self._cancel.get(key) is cancel:
                del self._cancel[key]
        images = [r["image"] for r in rows] + [None] * (N_COLUMNS - len(rows))
        captions = [f"**{r['name']}** — {wb.metrics_line(r)}" for r in rows] + [""] * (N_COLUMNS - len(rows))
        total = sum(r["latency_s"] for r in rows)
        status = f"Done: {len(rows)} images, seed {int(seed or 0)}, {total:.2f} s of generation."
        return (*images, *captions, wb.jsonable_rows(rows), status, rows)

    def cancel(self, request: gr.Request = None) -> str:
        key = getattr(request, "session_hash", None) or "default"
        flag = self._cancel.get(key)
        if flag is None:
            return "Nothing to cancel."
        flag.set()
        return "**Cancelling…** (stops after the current denoising step)"

    def pair_choices(self, rows: list[dict] | None):
        names = [r["name"] for r in rows or []]
        a = names[0] if names else None
        b = names[1] if len(names) > 1 else a
        return gr.update(choices=names, value=a), gr.update(choices=names, value=b), self.pair(rows, a, b)

    def pair(self, rows: list[dict] | None, a: str | None, b: str | None):
        by_name = {r["name"]: r["image"] for r in rows or []}
        if a not in by_name or b not in by_name:
            return None
        return by_name[a], by_name[b]

    def model_changed(self, model: str):
        """Defaults of the newly chosen model (steps, guidance) and its checkpoints; a warning if it cannot load."""
        try:
            defaults = wb.model_defaults_for(model)
        except Exception as exc:
            gr.Warning(str(exc))
            return (*[gr.skip()] * (2 * N_COLUMNS), *self.checkpoint_updates(model),
                    f"**Model {model!r} cannot be used:** {exc}")
        steps = [gr.update(value=defaults.get("steps", 25))] * N_COLUMNS
        guidance = [gr.update(value=defaults.get("guidance", 5.0))] * N_COLUMNS
        return (*steps, *guidance, *self.checkpoint_updates(model), f"Model **{model}** ready: {defaults}.")

    def checkpoint_updates(self, model: str | None) -> list:
        out = []
        for _ in range(1, N_COLUMNS):
            for section, params in self.columns_layout():
                if any(p["name"] == "checkpoint" for p in params):
                    out.append(gr.update(choices=checkpoint_choices(self.jobs.checkpoints(model, section))))
        return out

    def n_checkpoint_controls(self) -> int:
        return len(self.checkpoint_updates(None))

    # ------------------------------------------------------------------------------------ fine-tune

    def job_kind_changed(self, kind: str, preset_name: str):
        """Show the settings of the kind and fill them from the preset."""
        values = wb.preset(kind, preset_name)
        out = []
        for k in ("efficientdm", "lcd"):
            group_kind = "efficientdm" if kind == "efficientdm" else "lcd"
            out.append(gr.update(visible=k == group_kind))
        for k in ("efficientdm", "lcd"):
            for p in wb.job_params(k):
                if (k == "efficientdm") == (kind == "efficientdm"):
                    out.append(gr.update(value=values[p["name"]]))
                else:
                    out.append(gr.skip())
        return out

    def start_job(self, kind: str, model: str, *values: Any):
        """Start a fine-tune from the advanced-settings form (values: every efficientdm then lcd setting)."""
        values = list(values)
        ft, lcd = wb.job_params("efficientdm"), wb.job_params("lcd")
        settings_ft = {p["name"]: coerce(p, v) for p, v in zip(ft, values[:len(ft)], strict=True)}
        settings_lcd = {p["name"]: coerce(p, v) for p, v in zip(lcd, values[len(ft):], strict=True)}
        try:
            job_id = self.jobs.start(kind, model or self.model, settings_ft if kind == "efficientdm" else settings_lcd)
        except Exception as exc:
            raise user_error(exc) from exc
        gr.Info(f"fine-tune {job_id} started")
        return self.job_choices(job_id), job_id

    def api_finetune(self, kind: str, preset: str, model: str, settings_json: str = "{}") -> str:
        """API: start a fine-tune from a preset with optional overrides (JSON object); returns the job id."""
        try:
            overrides = json.loads(settings_json or "{}")
            if not isinstance(overrides, dict):
                raise ValueError(f"settings: expected a JSON object, got {settings_json!r}")
            return self.jobs.start(kind, model or self.model, {**wb.preset(kind, preset), **overrides})
        except json.JSONDecodeError as exc:
            raise gr.Error(f"settings: malformed JSON ({exc.msg})") from exc
        except Exception as exc:
            raise user_error(exc) from exc

    def api_job(self, job_id: str) -> dict:
        """API: a job's state (status, step, loss, eta_s, checkpoint, error)."""
        try:
            return self.jobs.get(job_id)
        except Exception as exc:
            raise user_error(exc) from exc

    def job_choices(self, selected: str | None = None):
        ids = [j["id"] for j in self.jobs.jobs()]
        return gr.update(choices=ids, value=selected if selected in ids else (ids[0] if ids else None))

    def cancel_job(self, job_id: str) -> str:
        if not job_id:
            return "Select a job first."
        try:
            job = self.jobs.cancel(job_id)
        except Exception as exc:
            raise user_error(exc) from exc
        return f"Cancel requested for {job_id} (status: {job['status']}); it saves a checkpoint and stops."

    def jobs_table(self) -> pd.DataFrame:
        rows = [{"id": j["id"], "kind": j["kind"], "model": j["model"], "status": j["status"], "step": j.get("step"),
                 "loss": j.get("loss"), "eta_s": j.get("eta_s")} for j in self.jobs.jobs()]
        return pd.DataFrame(rows, columns=["id", "kind", "model", "status", "step", "loss", "eta_s"])

    def job_view(self, job_id: str | None):
        """Loss curve (step, loss) and a status line with the ETA of one job."""
        empty = pd.DataFrame({"step": [], "loss": []})
        if not job_id:
            return empty, "No job selected."
        try:
            job = self.jobs.get(job_id)
        except ValueError:
            return empty, f"Job {job_id} not found."
        progress = [r for r in self.jobs.progress(job_id) if r.get("loss") is not None]
        curve = pd.DataFrame({"step": [r["step"] for r in progress], "loss": [float(r["loss"]) for r in progress]})
        eta = job.get("eta_s")
        line = f"**{job['kind']}** on {job['model']} — **{job['status']}**"
        if job.get("step") is not None:
            line += f", step {job['step']}, loss {job['loss']}"
        if eta is not None and job["status"] not in wb.TERMINAL:
            line += f", ETA {eta:.0f} s"
        if job.get("error"):
            line += f"\n\nError: {job['error']}"
        if job["status"] == "done":
            line += f"\n\nCheckpoint: `{job['checkpoint']}` (selectable in the Playground)"
        return curve, line

    def poll(self, job_id: str | None, known: list | None, model: str):
        """Timer tick: jobs table, the selected job's curve, and new checkpoints into the Playground."""
        table = self.jobs_table()
        curve, line = self.job_view(job_id)
        ckpts = [c["path"] for c in self.jobs.checkpoints()]
        if known is not None and ckpts == known:
            updates = [gr.skip()] * self.n_checkpoint_controls()
        else:
            updates = self.checkpoint_updates(model or self.model)
        return (table, curve, line, ckpts, *updates)

    # ----------------------------------------------------------------------------------- curves

    def sweep_sections(self) -> list[str]:
        return ["variant"] + [s for s in SECTIONS if any(self._numeric(self.params.get(s, [])))]

    @staticmethod
    def _numeric(params: list[dict]) -> list[dict]:
        return [p for p in params if p["type"] in ("int", "float") and p.get("choices") is None]

    def sweep_params(self, section: str) -> list[dict]:
        return VARIANT_PARAMS if section == "variant" else self._numeric(self.params.get(section, []))

    def sweep_section_changed(self, section: str):
        names = [p["name"] for p in self.sweep_params(section)]
        first = names[0] if names else None
        return (gr.update(choices=names, value=first), *self.sweep_param_changed(section, first))

    def sweep_param_changed(self, section: str, name: str | None):
        p = next((p for p in self.sweep_params(section) if p["name"] == name), None)
        if p is None:
            return gr.skip(), gr.skip(), gr.skip(), ""
        lo, hi = p.get("minimum"), p.get("maximum")
        start = p["default"] if lo is None else lo
        stop = start + 7 if p["type"] == "int" else start + 1.0
        if hi is not None:
            stop = min(stop, hi)
        step = 1 if p["type"] == "int" else round((stop - start) / 4, 4) or 0.1
        bounds = {"minimum": lo, "maximum": hi}
        return (gr.update(value=start, **bounds), gr.update(value=stop, **bounds), gr.update(value=step),
                p.get("help") or "")

    def run_sweep(self, prompt: str, seed: float, model: str, variants_json: str, section: str, name: str,
                  start: float, stop: float, step: float, n_prompts: float, previous: list | None,
                  request: gr.Request = None, progress=gr.Progress()):
        p = next((p for p in self.sweep_params(section) if p["name"] == name), None)
        if p is None:
            raise gr.Error(f"parameter {name!r} is not a numeric parameter of {section!r}")
        cancel = threading.Event()
        key = getattr(request, "session_hash", None) or "default"
        self._cancel[key] = cancel
        try:
            values = wb.sweep_values(float(start), float(stop), float(step or 1), p["type"])
            base = json.loads(variants_json)[0]
            rows = wb.sweep(prompt, int(seed or 0), base, section, name, values, model or self.model,
                            n_prompts=int(n_prompts or 1), cancel=cancel,
                            on_step=lambda d, t, n: progress((d, t), desc=n))
        except wb.GenerationCancelled as exc:
            raise gr.Error(f"sweep cancelled ({exc})") from exc
        except Exception as exc:
            raise user_error(exc) from exc
        finally:
            self._cancel.pop(key, None)
        base_row = [r for r in (previous or []) if r.get("value") is None]
        rows = (previous or []) + (rows if not base_row else rows[1:])
        return self.curves_outputs(rows)

    def curves_outputs(self, rows: list[dict]):
        table = pd.DataFrame([{"label": r["label"], "latency_s": round(r["latency_s"], 4),
                               "speedup": round(r["speedup"], 3),
                               "psnr_vs_baseline": None if r["psnr_vs_baseline"] is None
                               else round(r["psnr_vs_baseline"], 2), "unet_evals": r["unet_evals"]} for r in rows])
        fig = wb.curves_figure(rows) if rows else None
        curves = wb.method_curves_figure(rows) if rows else None
        return fig, curves, table, rows, f"{len(rows)} points ({len(wb.pareto_front(rows))} on the Pareto front)."

    def point_selected(self, rows: list[dict] | None, evt: gr.SelectData):
        if not rows or evt is None:
            return None, ""
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not 0 <= index < len(rows):
            return None, ""
        r = rows[index]
        return (r["baseline_image"], r["image"]), f"baseline ↔ **{r['label']}** — {wb.metrics_line(r)}"

    # ----------------------------------------------------------------------------------- report

    def export(self, source: str, comparison: list | None, curves: list | None, prompt: str, seed: float):
        rows = comparison if source.startswith("Playground") else curves
        if not rows:
            raise gr.Error(f"nothing to export yet: run the {source.split()[0]} first")
        try:
            html_path, zip_path = wb.export_report(rows, self.store, prompt, int(seed or 0),
                                                   "playground" if source.startswith("Playground") else "sweep")
        except Exception as exc:
            raise user_error(exc) from exc
        return (gr.update(value=str(zip_path), visible=True), gr.update(value=str(html_path), visible=True),
                f"Exported {len(rows)} rows: `{zip_path.name}` and `{html_path.name}`.")
