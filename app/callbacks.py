"""The Playground's and the Report tab's event handlers: each turns control values into one backend call and
its result into component updates. No method logic here: variants are plain data (backend.runs.compare).
The Fine-tune and Curves tabs are app.finetune and app.curves."""

from __future__ import annotations

import contextvars
import html
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from app.controls import checkpoint_choices, coerce, family_props, method_on_props, whole
from app.curves import CurvesCallbacks
from app.finetune import FinetuneCallbacks
from app.images import before_after_html, grid_png, upscale
from backend.reports import record
from backend.runs import compare as cmp
from backend.runs import knobs
from backend.runs.jobs import JobLimits, JobService

log = logging.getLogger("speedlab.app")
N_COLUMNS = cmp.MAX_VARIANTS + 1  # the baseline and up to 4 variants


def user_error(exc: BaseException) -> gr.Error:
    """A visible message for a backend error: ValueErrors carry one line naming the bad value."""
    if isinstance(exc, ValueError):
        return gr.Error(str(exc))
    log.exception("unexpected error", exc_info=exc)
    return gr.Error(f"{type(exc).__name__}: {exc}")


def in_one_thread(make: Callable[[], Iterator]) -> Iterator:
    """The items of the iterator ``make()`` runs on one thread of its own, as they come: Gradio may resume a
    handler's generator on another thread each time, and a generation holds the device lock and its cancel hook on
    the thread that started it. An exception of the iterator is raised here."""
    items: queue.Queue = queue.Queue()
    end = object()

    def work() -> None:
        try:
            for item in make():
                items.put(item)
            items.put(end)
        except BaseException as exc:  # handed over, raised in the caller's thread
            items.put(exc)

    # in the caller's context: Gradio finds the request's progress bar through context variables
    threading.Thread(target=contextvars.copy_context().run, args=(work,), name="speedlab-generate",
                     daemon=True).start()
    while (item := items.get()) is not end:
        if isinstance(item, BaseException):
            raise item
        yield item


class Cancels:
    """Per browser session: the cancel flag of the request that is running (generation or sweep)."""

    def __init__(self):
        self._flags: dict[str, threading.Event] = {}

    @staticmethod
    def key(request: gr.Request | None) -> str:
        return getattr(request, "session_hash", None) or "default"

    def begin(self, request: gr.Request | None) -> threading.Event:
        flag = threading.Event()
        self._flags[self.key(request)] = flag
        return flag

    def end(self, request: gr.Request | None, flag: threading.Event) -> None:
        if self._flags.get(self.key(request)) is flag:
            del self._flags[self.key(request)]

    def set(self, request: gr.Request | None) -> bool:
        flag = self._flags.get(self.key(request))
        if flag is None:
            return False
        flag.set()
        return True


class Callbacks:
    """State shared by every browser session: the store folder, limits, fine-tune jobs, cancel flags."""

    def __init__(self, model: str = "shapes", store: str | Path = "runs/workbench", limits: cmp.Limits | None = None,
                 job_limits: JobLimits | None = None):
        self.model = model
        self.store = Path(store)
        self.store.mkdir(parents=True, exist_ok=True)
        self.limits = limits or cmp.Limits()
        self.jobs = JobService(self.store, job_limits or JobLimits(data_roots=(str(knobs.ASSETS),)))
        self.params = knobs.all_method_params()
        self.cancels = Cancels()
        self.finetune = FinetuneCallbacks(self.jobs)
        self.curves = CurvesCallbacks(self.store, self.params, self.cancels, self.limits)

    # -------------------------------------------------------------------------------- columns

    def columns_layout(self) -> list[tuple[str, list[dict]]]:
        """(section, declared params) of each method block in a variant column."""
        return list(self.params.items())

    def checkpoints(self, model: str | None, section: str) -> list[dict]:
        return knobs.asset_checkpoints(model, section) + self.jobs.checkpoints(model, section)

    def collect_variants(self, *values: Any) -> str:
        """Control values, column by column, → a JSON list with one entry per column: the variant, or null
        for a column that is off (the baseline column is always on).

        Per column: enabled, name, scheduler, steps, guidance, then per method section: on, *params.
        """
        values = list(values)
        columns: list[dict | None] = []
        for col in range(N_COLUMNS):
            enabled, name, scheduler, steps, guidance = values[:5]
            del values[:5]
            v: dict[str, Any] = {"steps": whole(steps), "guidance": float(guidance)}
            if name and name.strip():
                v["name"] = name.strip()
            if scheduler and scheduler != "default":
                v["scheduler"] = scheduler
            if col > 0:
                for section, params in self.columns_layout():
                    on = values.pop(0)
                    raw = values[:len(params)]
                    del values[:len(params)]
                    if on:
                        v[section] = {p["name"]: coerce(p, x) for p, x in zip(params, raw, strict=True)}
            columns.append(v if col == 0 or enabled else None)
        return json.dumps(columns)

    def checkpoint_chosen(self, section: str, path: str):
        """A checkpoint picked in a column: its section on, and the settings it implies set (and locked), e.g.
        a quant checkpoint's method and bits, a consistency student's lcm scheduler, its steps and guidance."""
        params = self.params[section]
        locked = knobs.locked_by_checkpoint(section)
        try:
            implied = knobs.checkpoint_implies(section, path or "")
        except ValueError as exc:
            gr.Warning(str(exc))
            implied = {}
        fixed = implied.get(section, {})
        updates = [gr.update(value=True) if path else gr.skip()]  # the section's "on" box
        for p in params:
            if p["name"] in locked:
                updates.append(gr.update(value=fixed[p["name"]], interactive=False) if p["name"] in fixed
                               else gr.update(interactive=True))
        scheduler = gr.update(value=implied["scheduler"], interactive=False) if "scheduler" in implied \
            else gr.update(interactive=True) if "scheduler" in knobs.checkpoint_sets(section) else gr.skip()
        steps = gr.update(value=implied["steps"]) if "steps" in implied else gr.skip()
        guidance = gr.update(value=implied["guidance"]) if "guidance" in implied else gr.skip()
        return (*updates, scheduler, steps, guidance)

    # -------------------------------------------------------------------------------- generate

    def generate(self, prompt: str, seed: float, model: str, variants_json: str,
                 request: gr.Request = None, progress=gr.Progress()):
        """One generation per column that is on, same seed, each column shown as soon as it is made (the baseline
        first); outputs per column (image, caption), then the results JSON, the status line and the comparison
        (rows addressed by column, None where off). Bad input (seed, steps, variants) is one status line."""
        start = time.perf_counter()
        keep = [gr.skip()] * (2 * N_COLUMNS + 1)
        try:
            columns = self._columns(variants_json)
            seed = cmp.check_seed(seed)
        except ValueError as exc:
            yield (*keep, f"**Error:** {exc}", gr.skip())
            return
        cancel = self.cancels.begin(request)
        progress(0, desc="queued for the device")
        last = [0.0]

        def on_step(done: int, total: int, name: str) -> None:  # ≤ 4 updates a second: the page stays responsive
            if time.monotonic() - last[0] >= 0.25 or done == total:
                last[0] = time.monotonic()
                progress((done, total), desc=f"{name}: denoising")

        on = [i for i, v in enumerate(columns) if v is not None]
        by_col: list[dict | None] = [None] * N_COLUMNS
        rows: list[dict] = []
        images = [gr.update(value=None) if v is None else gr.skip() for v in columns]
        captions = ["" if v is None else gr.skip() for v in columns]
        try:
            made = in_one_thread(lambda: cmp.compare_columns(prompt, seed, [columns[i] for i in on],
                                                             model or self.model, on_step=on_step, cancel=cancel,
                                                             limits=self.limits))
            for i, row in zip(on, made, strict=False):
                by_col[i] = row
                rows.append(row)
                images[i] = gr.update(value=upscale(row.get("image")), label=row["name"])
                captions[i] = f"**{html.escape(row['name'])}** — {cmp.metrics_line(row)}"
                if len(rows) < len(on):  # shown at once; the last one comes with the status below
                    yield (*images, *captions, gr.skip(), f"{len(rows)} of {len(on)} images…", gr.skip())
        except cmp.GenerationCancelled as exc:
            yield (*keep, f"**Cancelled** ({exc}) after {time.perf_counter() - start:.1f} s.", None)
            return
        except Exception as exc:  # the request as a whole (prompt, seed, model): said in the status line
            if not isinstance(exc, ValueError):
                log.exception("generation failed", exc_info=exc)
            yield (*keep, f"**Error:** {exc if isinstance(exc, ValueError) else f'{type(exc).__name__}: {exc}'}",
                   gr.skip())
            return
        finally:
            self.cancels.end(request, cancel)
        ok = [r for r in rows if "error" not in r]
        wall = time.perf_counter() - start
        status = (f"Done: {len(ok)} images, seed {seed}, {wall:.2f} s wall time "
                  f"({sum(r['latency_s'] for r in ok):.2f} s of it generating)")
        failed = [r["name"] for r in rows if "error" in r]
        status += f"; errors in: {', '.join(failed)}." if failed else "."
        yield (*images, *captions, cmp.jsonable_rows(rows), status, by_col)

    def time_columns(self, prompt: str, seed: float, model: str, variants_json: str, by_col: list | None,
                     rounds: float, status: str, request: gr.Request = None):
        """After a generation: the timing protocol over the columns (``rounds`` interleaved rounds, speed-up per
        round against the baseline); captions get the median with its interval. 0 rounds: nothing to do."""
        rounds = int(rounds or 0)
        skip = (*[gr.skip()] * N_COLUMNS, gr.skip(), gr.skip())
        if rounds < 1 or not str(status).startswith("Done:") or not by_col or by_col[0] is None or "error" in by_col[0]:
            return skip
        start = time.perf_counter()
        columns = self._columns(variants_json)
        on = [i for i, row in enumerate(by_col) if row is not None and "error" not in row and columns[i] is not None]
        cancel = self.cancels.begin(request)
        try:
            timing = cmp.time_columns(prompt, int(seed or 0), [columns[i] for i in on], model or self.model, rounds,
                                      cancel=cancel, limits=self.limits)
        except cmp.GenerationCancelled as exc:
            return (*skip[:N_COLUMNS], f"{status} Timing stopped ({exc}): captions show one run each.", gr.skip())
        finally:
            self.cancels.end(request, cancel)
        by_col = list(by_col)
        for i, t in zip(on, timing, strict=True):
            if t is not None:
                by_col[i] = {**by_col[i], "timing": t, "latency_s": t["latency_s"],
                             **({"speedup": t["speedup"]} if t.get("speedup") is not None else {})}
        captions = ["" if r is None else f"**{html.escape(r['name'])}** — {cmp.metrics_line(r)}" for r in by_col]
        noisy = [by_col[i]["name"] for i, t in zip(on, timing, strict=True) if t and t.get("timing_noisy")]
        line = f"{status} Timed in {rounds} interleaved rounds ({time.perf_counter() - start:.1f} s)"
        line += f"; timing noisy on this machine for: {', '.join(noisy)}." if noisy else "."
        return (*captions, line, by_col)

    def _columns(self, variants_json: str) -> list[dict | None]:
        try:
            columns = json.loads(variants_json) if isinstance(variants_json, str) else variants_json
        except json.JSONDecodeError as exc:
            raise ValueError(f"variants: malformed JSON ({exc.msg})") from exc
        except RecursionError:
            raise ValueError("variants: JSON nested too deeply; allowed: a list of flat variant objects") from None
        if not isinstance(columns, list) or not columns or len(columns) > N_COLUMNS:
            raise ValueError(f"variants: a JSON list of 1 to {N_COLUMNS} column entries (variant objects, null for a "
                           "column that is off), the baseline first")
        if columns[0] is None:
            raise ValueError("variants: the first column (the baseline) must be on")
        return columns + [None] * (N_COLUMNS - len(columns))

    def cancel(self, request: gr.Request = None) -> str:
        if not self.cancels.set(request):
            return "Nothing to cancel."
        return "**Cancelling…** (stops within the current layer)"

    # -------------------------------------------------------------------------------- comparing

    @staticmethod
    def _shown(by_col: list | None) -> list[dict]:
        return [r for r in by_col or [] if r is not None and r.get("image") is not None]

    def pair_choices(self, by_col: list | None, show_diff: bool):
        names = [r["name"] for r in self._shown(by_col)]
        a = names[0] if names else None
        b = names[1] if len(names) > 1 else a
        return (gr.update(choices=names, value=a), gr.update(choices=names, value=b),
                self.pair(by_col, a, b, show_diff))

    def pair(self, by_col: list | None, a: str | None, b: str | None, show_diff: bool) -> str:
        images = {r["name"]: r["image"] for r in self._shown(by_col)}
        return before_after_html(images.get(a), images.get(b), a or "before", b or "after", bool(show_diff))

    def grid_file(self, by_col: list | None, prompt: str, seed: float):
        """The labelled grid PNG of every column that is on (for the download button)."""
        cols = [{"name": r["name"], "image": r.get("image"), "caption": cmp.metrics_line(r)}
                for r in by_col or [] if r is not None]
        if not cols:
            return gr.update(value=None, interactive=False)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = grid_png(cols, prompt, int(seed or 0), self.store / "grids" / f"speedlab-grid-{stamp}.png")
        return gr.update(value=str(path), interactive=True)

    def model_changed(self, model: str, *state: str):
        """Defaults of the newly chosen model (steps, guidance; a column on the lcm scheduler keeps its own), its
        checkpoints and its family's form; a message if it cannot load. ``state``: each column's scheduler, then
        each checkpoint box's value (Callbacks.checkpoint_updates' order)."""
        schedulers, held = state[:N_COLUMNS], state[N_COLUMNS:]
        try:
            defaults = knobs.model_defaults_for(model)
        except Exception as exc:
            return (*[gr.skip()] * (2 * N_COLUMNS), *self.checkpoint_updates(model, held),
                    *[gr.skip()] * len(self.family_updates(None)), f"**Model {model!r} cannot be used:** {exc}")
        value = min(defaults.get("steps", 25), self.limits.max_steps or 10 ** 9)
        steps = [gr.skip() if sched == "lcm" else gr.update(value=value) for sched in schedulers]
        guidance = [gr.skip() if sched == "lcm" else gr.update(value=defaults.get("guidance", 5.0))
                    for sched in schedulers]  # a student keeps the guidance it was distilled for
        form = self.model_form(model)
        refused = f" Not for its family ({form.family}): {', '.join(form.refused)}." if form and form.refused else ""
        return (*steps, *guidance, *self.checkpoint_updates(model, held), *self.family_updates(form),
                f"Model **{model}** ready: {defaults}.{refused}")

    @staticmethod
    def model_form(model: str) -> knobs.FamilyForm | None:
        """The method forms' restrictions for the model's family (None when it cannot be loaded: no restriction)."""
        try:
            return knobs.model_form(model)
        except Exception:
            return None

    def family_updates(self, form: knobs.FamilyForm | None) -> list:
        """Per column 1.. and method section: its on box (locked with the reason where the family refuses the
        method), then each knob (hidden when declared for other families; choices the family runs)."""
        out = []
        for _ in range(1, N_COLUMNS):
            for section, params in self.columns_layout():
                out.append(gr.update(**method_on_props(form, section)))
                for p in params:
                    props = family_props(form, section, p)
                    if "choices" in props:
                        props["value"] = p["default"] if p["default"] in props["choices"] else props["choices"][0]
                    out.append(gr.update(**props) if props else gr.skip())
        return out

    def checkpoint_updates(self, model: str | None, held: tuple | list = ()) -> list:
        """Each checkpoint box offers the new model's checkpoints. A checkpoint belongs to the model it was made
        from: a box that held one gets the new model's shipped checkpoint of its method (the same column, now
        for this model), else it is cleared (which also unlocks the settings it had fixed). ``held``: the boxes'
        values, in this order."""
        boxes = [section for _ in range(1, N_COLUMNS) for section, params in self.columns_layout()
                 if any(p["name"] == "checkpoint" for p in params)]
        held = list(held) + [""] * (len(boxes) - len(held))
        out = []
        for section, value in zip(boxes, held, strict=True):
            shipped = knobs.asset_checkpoints(model, section) if value else []
            out.append(gr.update(choices=checkpoint_choices(self.checkpoints(model, section)),
                                 value=shipped[0]["path"] if shipped else ""))
        return out

    # -------------------------------------------------------------------------------- report

    def export(self, source: str, by_col: list | None, curves_run: dict | None, prompt: str, seed: float):
        """Export the Playground comparison or the Curves sweep: zip, HTML, status, inline preview."""
        try:
            if source.startswith("Playground"):
                rows = [r for r in by_col or [] if r is not None]
                if not rows:
                    raise ValueError("nothing to export yet: generate in the Playground first")
                run_id = record.save_comparison(self.store, rows, prompt, int(seed or 0))
                paths = record.export(self.store, run_id, "playground", self.store)
            else:
                if not curves_run:
                    raise ValueError("nothing to export yet: run a sweep in the Curves tab first")
                paths = record.export(self.store / "curves", curves_run["run_id"], "curves", self.store)
        except Exception as exc:
            raise user_error(exc) from exc
        page = paths.html.read_text()
        preview = (f'<iframe title="report preview" style="width:100%;height:640px;border:1px solid #ddd" '
                   f'srcdoc="{html.escape(page, quote=True)}"></iframe>')
        return (gr.update(value=str(paths.zip), visible=True), gr.update(value=str(paths.html), visible=True),
                f"Exported `{paths.html.name}` and `{paths.zip.name}`.", preview)
