"""The Find my stack tab: backend.tune.search.run_tune in a worker thread, the measured front filling in as
evaluations land, Cancel between evaluations, and "Open in Playground" for the recommended Variant (it fills
column 1 of the Playground)."""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path
from typing import Any

import gradio as gr

from app.callbacks import user_error
from backend.core import JobCancelled, JobControl
from backend.tune.plot import front_figure
from backend.world.prompts import DEFAULT_SET, PROMPT_SETS


def _progress_figure(points: list[dict], tolerance: dict):
    return front_figure({"tolerance": tolerance, "searched": [p for p in points if p["rung"] != "confirm"],
                         "front": [p for p in points if p["rung"] == "confirm"], "recommended": None})


class TuneCallbacks:
    """One search at a time per workbench; its run folders live in the workbench store."""

    def __init__(self, store: Path, params: dict[str, list[dict]]):
        self.store, self.params = Path(store), params
        self.cancel_flag = threading.Event()

    def run(self, model: str, prompt_set: str, tolerance: float, budget: float, space_text: str):
        """A generator for Gradio: (status, plot, recommended JSON) after each stage of the search."""
        from backend.tune.search import Objective, default_metric, run_tune
        from backend.tune.space import load_space

        try:
            space = load_space(space_text.strip() or None)
            from backend.models import has_shapes_judge
            from backend.sampling import load_model
            from backend.variant import Variant

            metric = default_metric(model, has_shapes_judge(load_model(Variant.from_dict({"model": model}))))
            objective = Objective(metric, float(tolerance))
        except Exception as exc:  # noqa: BLE001 - shown as one line in the page
            raise user_error(exc) from None
        tol = {"metric": objective.metric, "line": objective.line}
        events: queue.Queue = queue.Queue()
        self.cancel_flag.clear()
        job = JobControl(cancel=self.cancel_flag)
        rundir = self.store / f"tune-{Path(model).name}-{prompt_set}"

        def work() -> None:
            try:
                events.put(("done", run_tune(model, prompt_set, tolerance, rundir, space, None, budget or None,
                                             job=job, on_event=lambda e: events.put(("event", e)))))
            except JobCancelled:
                events.put(("cancelled", None))
            except Exception as exc:  # noqa: BLE001
                events.put(("error", exc))

        threading.Thread(target=work, daemon=True).start()
        yield f"searching in {rundir} …", None, ""
        while True:
            kind, payload = events.get()
            if kind == "event":
                yield (f"{payload['stage']}: {len(payload['points'])} evaluations after {payload['elapsed_s']:.0f} s",
                       _progress_figure(payload["points"], tol), "")
            elif kind == "cancelled":
                yield f"cancelled; rerun to resume from the store in {rundir}", gr.skip(), ""
                return
            elif kind == "error":
                raise user_error(payload)
            else:
                yield summary_markdown(payload), front_figure(payload), (
                    json.dumps(payload["recommended"], indent=1) if payload["recommended"] else "")
                return

    def cancel(self) -> str:
        self.cancel_flag.set()
        return "cancel requested: the search stops after the evaluation in progress"

    def to_playground(self, variant_text: str) -> list[Any]:
        """Column 1's controls of the Playground set from a Variant: enabled, name, scheduler, steps, guidance,
        then per method section its on box and knobs."""
        if not variant_text.strip():
            raise user_error(ValueError("no recommended stack yet: run the search first"))
        v = json.loads(variant_text)
        values: list[Any] = [True, v.get("name") or "recommended", v.get("scheduler") or "default",
                             v.get("steps", 50), v.get("guidance") if v.get("guidance") is not None else gr.skip()]
        for section, params in self.params.items():
            sec = v.get(section)
            values.append(sec is not None)
            values += [sec[p["name"]] if sec and p["name"] in sec else gr.skip() for p in params]
        return values


def summary_markdown(result: dict) -> str:
    from backend.tune.plot import summary

    return "```\n" + summary(result) + "\n```"


def build_tune_tab(cb, controls: list) -> None:
    """The tab and its events; ``controls``: the Playground's flat control list (column 1 follows column 0's five)."""
    tc = TuneCallbacks(cb.store, cb.params)
    column_1 = controls[5:5 + 5 + sum(1 + len(p) for p in cb.params.values())]
    with gr.Tab("Find my stack"):
        gr.Markdown("The fastest stack whose paired quality stays inside the tolerance: screened on few prompts, "
                    "promoted, then confirmed on prompts and seeds the search never used.")
        with gr.Row():
            model = gr.Textbox(value=cb.model, label="model", max_lines=1)
            prompt_set = gr.Dropdown(list(PROMPT_SETS), value=DEFAULT_SET, label="prompt set")
            tolerance = gr.Number(value=2, label="tolerance", minimum=0, elem_id="tune-tolerance",
                                  info="accuracy: points the 95% interval may go below 0; psnr: lowest dB")
            budget = gr.Number(value=10, label="budget (minutes)", minimum=0, elem_id="tune-budget")
        space = gr.Textbox(label="space (YAML/JSON; empty: every registered method)", lines=3, elem_id="tune-space",
                           placeholder='{"methods": ["deepcache"], "values": {"deepcache.interval": [2, 3]}}')
        with gr.Row():
            start = gr.Button("Find my stack", variant="primary", elem_id="tune-start")
            stop = gr.Button("Cancel", variant="stop", elem_id="tune-cancel")
            to_pg = gr.Button("Open in Playground", elem_id="tune-open")
        status = gr.Markdown(elem_id="tune-status")
        plot = gr.Plot(label="front", elem_id="tune-plot")
        recommended = gr.Code(label="recommended Variant", language="json", elem_id="tune-variant")
    start.click(tc.run, [model, prompt_set, tolerance, budget, space], [status, plot, recommended],
                api_name="tune", concurrency_id="device", concurrency_limit=1)
    stop.click(tc.cancel, None, status, queue=False, api_name="tune_cancel", api_visibility="private")
    to_pg.click(tc.to_playground, recommended, column_1, queue=False, api_name="tune_open", api_visibility="private")
