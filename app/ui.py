"""The workbench layout: Playground, Fine-tune, Curves and Report tabs. Controls come from the methods'
declared parameters (app.controls); handlers are app.callbacks, app.finetune and app.curves; generations
and sweeps share one device slot, while cancels, polls and job starts have their own unqueued groups."""

from __future__ import annotations

import gradio as gr

from app.callbacks import N_COLUMNS, Callbacks
from app.controls import family_props, make_control, method_on_props
from app.curves import NONE, PROMPT_SOURCES
from app.finetune import form_kinds
from app.images import SLIDER_CSS, SLIDER_JS, before_after_html
from app.tune import build_tune_tab
from backend.bench.docs import QUANT_MAPS
from backend.methods.params import MAX_SEED
from backend.reports.plots import QUALITY_METRICS
from backend.runs import compare as cmp
from backend.runs import knobs
from backend.variant import MAX_STEPS, SCHEDULERS, Variant

DEFAULT_PROMPT = "a small red circle in the center"
DEVICE = {"concurrency_id": "device", "concurrency_limit": 1}  # one generation on the device at a time
AT_ONCE = {"concurrency_id": "control", "concurrency_limit": None}  # never queued behind the device
HINT = ("Press **Generate**: each column that is on makes one image with the same prompt and seed (the baseline "
        "first, shown as soon as it is ready), then timed rounds give the speed-ups their intervals.")
CURVES_HINT = "Pick a parameter and its range, then **Run sweep**: one point per value, latency vs quality."
CSS = (".speedlab-image img {image-rendering: pixelated; object-fit: contain}\n" + SLIDER_CSS)


def column_presets(cb: Callbacks) -> list[dict]:
    """What the columns show on first load: baseline, DeepCache and, with the shipped checkpoints of the
    embedded model, EfficientDM W4A4 and the RG-LCM student at the step count it was shipped for (lcm scheduler)."""
    ckpt = {c["section"]: c["path"] for c in knobs.asset_checkpoints(cb.model)}
    cols = [{"on": True}, {"on": True, "deepcache": {"interval": 3}}]  # no names: labels come from the settings
    if "quant" in ckpt:
        cols.append({"on": True,
                     "quant": {"method": "efficientdm", "weight_bits": 4, "act_bits": 4, "checkpoint": ckpt["quant"]}})
    else:
        cols.append({"on": False, "quant": {"weight_bits": 8, "act_bits": 8}})
    if "consistency" in ckpt:
        cols.append({"on": True, **knobs.checkpoint_implies("consistency", ckpt["consistency"]),
                     "consistency": {"checkpoint": ckpt["consistency"]}})
    else:
        cols.append({"on": False, "deepcache": {"interval": 5}})
    cols.append({"on": False})
    return cols[:N_COLUMNS]


def _playground(cb: Callbacks, defaults: dict):
    steps0, guidance0 = int(defaults.get("steps", 25)), float(defaults.get("guidance", 5.0))
    max_steps = cb.limits.max_steps or MAX_STEPS
    steps0 = min(steps0, max_steps)
    presets = column_presets(cb)
    labels = []  # the labels the columns will have (derived from their settings, as after Generate)
    for col, p in enumerate(presets):
        try:
            v = Variant.from_dict({"model": cb.model, "steps": steps0, **{k: x for k, x in p.items() if k != "on"}})
            labels.append(cmp.column_labels([v])[0])
        except ValueError:
            labels.append(f"column {col}")
    ui = {"controls": [], "images": [], "captions": [], "steps": [], "guidance": [], "ckpts": [], "ckpt_wiring": [],
          "family": []}  # every method on box and knob of columns 1.., in Callbacks.family_updates' order
    form = cb.model_form(cb.model)
    with gr.Row(equal_height=False):
        for col in range(N_COLUMNS):
            preset = presets[col]
            with gr.Column(min_width=200):
                ui["images"].append(gr.Image(label=labels[col], type="numpy", format="png", interactive=False,
                                             height=280, elem_id=f"image-{col}", elem_classes="speedlab-image",
                                             buttons=["download"]))
                ui["captions"].append(gr.Markdown(elem_id=f"caption-{col}"))
                enabled = gr.Checkbox(value=preset["on"], label="use this column", visible=col > 0,
                                      interactive=col > 0, elem_id=f"use-{col}")
                name = gr.Textbox(value="", label="name (optional prefix)", max_lines=1, elem_id=f"name-{col}",
                                  placeholder="the label is derived from the settings")
                with gr.Accordion("sampling", open=col == 0 or "scheduler" in preset, elem_id=f"sampling-{col}"):
                    lcm = preset.get("scheduler") == "lcm"
                    scheduler = gr.Dropdown(["default", *SCHEDULERS], value=preset.get("scheduler", "default"),
                                            label="scheduler", interactive=not lcm)
                    steps = gr.Number(value=preset.get("steps", steps0), label="steps", elem_id=f"steps-{col}",
                                      info=f"1 to {max_steps}")  # no clamping: out-of-range is refused, said
                    guidance = gr.Slider(0.0, 20.0, step=0.5, value=preset.get("guidance", guidance0),
                                         label="guidance")
                ui["steps"].append(steps)
                ui.setdefault("schedulers", []).append(scheduler)
                ui["guidance"].append(guidance)
                ui["controls"] += [enabled, name, scheduler, steps, guidance]
                if col == 0:
                    continue
                for section, params in cb.columns_layout():
                    values = preset.get(section, {})
                    locked = bool(values.get("checkpoint"))
                    with gr.Accordion(knobs.method_titles()[section], open=section in preset):
                        on = gr.Checkbox(**{"value": section in preset, **method_on_props(form, section)},
                                         label=f"{section} on", elem_id=f"{section}-on-{col}")
                        comps = []
                        for p in params:
                            c = make_control(p, values.get(p["name"]), slider_cap=64,
                                             checkpoints=cb.checkpoints(cb.model, section),
                                             elem_id=f"{section}-{p['name']}-{col}",
                                             family=family_props(form, section, p))
                            if locked and p["name"] in ("method", "weight_bits", "act_bits"):
                                c.interactive = False
                            comps.append(c)
                    ui["controls"] += [on, *comps]
                    ui["family"] += [on, *comps]
                    by_name = dict(zip([p["name"] for p in params], comps, strict=True))
                    if "checkpoint" in by_name:
                        ui["ckpts"].append(by_name["checkpoint"])
                        locked_comps = [by_name[n] for n in ("method", "weight_bits", "act_bits")
                                        if n in by_name and section == "quant"]
                        outs = [on, *locked_comps, scheduler, steps, guidance]
                        ui["ckpt_wiring"].append((section, by_name["checkpoint"], outs))
    return ui


def build_demo(cb: Callbacks) -> gr.Blocks:
    try:
        defaults, model_error = knobs.model_defaults_for(cb.model), ""
    except Exception as exc:  # the page still opens, saying why the model cannot be used
        defaults, model_error = {}, f"**Model {cb.model!r} cannot be used:** {exc}"

    with gr.Blocks(title="Speedlab workbench") as demo:
        gr.Markdown("## Speedlab workbench — the baseline and accelerated variants, same prompt and seed")
        comparison = gr.State([])
        curves_run = gr.State(None)
        with gr.Tab("Playground") as pg_tab:
            with gr.Row():
                prompt = gr.Textbox(label="Prompt", value=DEFAULT_PROMPT, scale=4, elem_id="prompt")
                seed = gr.Number(label="Seed", value=0, scale=1, elem_id="seed", info=f"0 to 2^53−1 ({MAX_SEED})")
                model = gr.Dropdown(list(dict.fromkeys([cb.model, *knobs.MODELS])), value=cb.model, label="Model",
                                    allow_custom_value=True, scale=2, elem_id="model",
                                    info="a listed model, a local diffusers folder, a single file or a cached Hub id")
            with gr.Row():
                generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
                rounds = gr.Slider(0, 7, step=1, value=3, label="timing rounds", elem_id="rounds",
                                   info="after generating: interleaved timed rounds for intervals (0: one run)")
                grid_btn = gr.DownloadButton("Download grid PNG", interactive=False, elem_id="grid-download")
            with gr.Row():
                status = gr.Markdown(model_error or HINT, elem_id="status")
                cancel_note = gr.Markdown(elem_id="cancel-note")  # not the status: a cancel may answer after the run
            ui = _playground(cb, defaults)
            with gr.Row():
                pair_a = gr.Dropdown(label="left (before)", choices=[], interactive=True)
                pair_b = gr.Dropdown(label="right (after)", choices=[], interactive=True)
                show_diff = gr.Checkbox(label="difference map", value=False)
            pair = gr.HTML(before_after_html(None, None), js_on_load=SLIDER_JS, elem_id="before-after")
            with gr.Accordion("results (JSON) and the variants sent", open=False):
                results = gr.JSON(label="results")
                variants_box = gr.Textbox(label="variants (JSON: one entry per column, null when off)", lines=4,
                                          elem_id="variants")

        with gr.Tab("Fine-tune") as ft_tab:
            with gr.Row():
                kind = gr.Radio(knobs.finetune_kinds(), value="efficientdm", label="method",
                                info="EfficientDM: low-bit quantization-aware LoRA; LCD / RG-LCD: 1-8 step students")
                preset_c = gr.Radio(list(knobs.PRESET_NAMES), value=knobs.PRESET_NAMES[0], label="preset")
                ft_model = gr.Textbox(value=cb.model, label="model", max_lines=1, elem_id="ft-model")
            with gr.Accordion("advanced settings", open=False):
                groups, job_controls = [], []
                for k in form_kinds():
                    values = knobs.preset(k, knobs.PRESET_NAMES[0])
                    with gr.Group(visible=k == "efficientdm") as group:
                        job_controls += [make_control(p, values[p["name"]], elem_id=f"ft-{k}-{p['name']}")
                                         for p in knobs.job_params(k)]
                    groups.append(group)
            with gr.Row():
                start_btn = gr.Button("Start fine-tune", variant="primary", elem_id="start-finetune")
                job_sel = gr.Dropdown(label="job", choices=[], interactive=True, allow_custom_value=True)
                job_id = gr.Textbox(label="started job", interactive=False, max_lines=1, elem_id="job-id")
                cancel_job_btn = gr.Button("Cancel job", variant="stop", elem_id="cancel-finetune")
                resume_btn = gr.Button("Resume job")
            job_status = gr.Markdown(elem_id="job-status")
            with gr.Row():
                loss_plot = gr.LinePlot(x="step", y="loss", label="loss", height=320, visible=False)
                accuracy_plot = gr.Plot(label="judged accuracy (hard prompts)", show_label=False, visible=False,
                                        elem_id="accuracy-plot")
            jobs_df = gr.Dataframe(label="jobs (kept in the results store)", interactive=False)
            timer = gr.Timer(2.0, active=False)

        with gr.Tab("Curves") as cv_tab:
            with gr.Row():
                section = gr.Dropdown(cb.curves.sections(), value="deepcache", label="method")
                param = gr.Dropdown([], label="parameter")
                start = gr.Number(label="from")
                stop = gr.Number(label="to")
                step = gr.Number(label="step", value=1)
            param_help = gr.Markdown()
            with gr.Row():
                section2 = gr.Dropdown([NONE, *cb.curves.sections()], value=NONE, label="second parameter (colour)")
                param2 = gr.Dropdown([], label="parameter")
                values2 = gr.Textbox(label="values (comma list)", placeholder="0, 2")
                source = gr.Dropdown(list(PROMPT_SOURCES), value=PROMPT_SOURCES[0], label="prompts")
                n_prompts = gr.Slider(2, 16, step=1, value=4, label="number of prompts")
                metric = gr.Dropdown([m for m in QUALITY_METRICS], value="psnr_vs_baseline", label="quality axis")
            with gr.Row():
                sweep_btn = gr.Button("Run sweep", variant="primary", elem_id="sweep")
                sweep_cancel = gr.Button("Cancel", variant="stop")
            with gr.Row():
                curves_status = gr.Markdown(CURVES_HINT, elem_id="curves-status")
                sweep_cancel_note = gr.Markdown()
            plot = gr.Plot(label="latency vs quality, Pareto front dashed")
            table = gr.Dataframe(label="points (select a row to compare it with the baseline)", interactive=False)
            point_md = gr.Markdown()
            point_pair = gr.HTML(before_after_html(None, None), js_on_load=SLIDER_JS)
            gr.Markdown("### Quantization: where PTQ breaks")
            quant_maps = []
            for part, *_ in QUANT_MAPS:
                quant_maps += [gr.Plot(visible=False, show_label=False, elem_id=f"quant-{part}"),
                               gr.Markdown(elem_id=f"quant-{part}-caption")]

        with gr.Tab("Report") as rp_tab:
            export_source = gr.Radio(["Playground comparison", "Curves sweep"], value="Playground comparison",
                                     label="export")
            export_btn = gr.Button("Export report", variant="primary", elem_id="export")
            report_status = gr.Markdown("Generate in the Playground (or run a sweep in Curves), then **Export "
                                        "report**: an HTML page and a zip bundle with every column's images and "
                                        "numbers.", elem_id="report-status")
            with gr.Row():
                zip_btn = gr.DownloadButton("Download zip bundle", visible=False)
                html_btn = gr.DownloadButton("Download HTML report", visible=False, elem_id="report-html")
            preview = gr.HTML()
        build_tune_tab(cb, ui["controls"])  # the Find my stack tab (app/tune.py)

        # ---- Playground events
        gen = generate_btn.click(cb.collect_variants, ui["controls"], variants_box, queue=False,
                                 api_visibility="private")
        run = gen.then(cb.generate, [prompt, seed, model, variants_box],
                       [*ui["images"], *ui["captions"], results, status, comparison], api_name="generate",
                       show_progress_on=status, **DEVICE)  # images already made stay visible
        run.then(cb.pair_choices, [comparison, show_diff], [pair_a, pair_b, pair], api_visibility="private",
                 queue=False)
        timed = run.then(cb.time_columns, [prompt, seed, model, variants_box, comparison, rounds, status],
                         [*ui["captions"], status, comparison], api_visibility="private", **DEVICE)
        timed.then(cb.grid_file, [comparison, prompt, seed], grid_btn, api_visibility="private", **AT_ONCE)
        # unqueued: a queued event reaches the handler seconds later while the device slot is busy
        cancel_btn.click(cb.cancel, None, cancel_note, api_name="cancel", queue=False)
        generate_btn.click(lambda: "", None, cancel_note, queue=False, api_visibility="private")
        for trigger in (pair_a.change, pair_b.change, show_diff.change):
            trigger(cb.pair, [comparison, pair_a, pair_b, show_diff], pair, api_visibility="private", queue=False)
        model.change(cb.model_changed, [model, *ui["schedulers"], *ui["ckpts"]],
                     [*ui["steps"], *ui["guidance"], *ui["ckpts"], *ui["family"], status],
                     api_visibility="private")
        for sec, dd, outs in ui["ckpt_wiring"]:
            dd.change(lambda path, _s=sec: cb.checkpoint_chosen(_s, path), dd, outs, api_visibility="private",
                      queue=False)

        # ---- Fine-tune events
        ft = cb.finetune
        for trigger in (kind.change, preset_c.change):
            trigger(ft.kind_changed, [kind, preset_c], [*groups, *job_controls], api_visibility="private")
        start_btn.click(ft.start, [kind, ft_model, *job_controls], [job_sel, job_id, job_status, timer],
                        api_name="finetune", **AT_ONCE)
        cancel_job_btn.click(ft.cancel, job_sel, job_status, api_name="cancel_finetune", **AT_ONCE)
        resume_btn.click(ft.resume, job_sel, [job_status, timer], api_name="resume_finetune", **AT_ONCE)
        job_sel.input(ft.view, job_sel, [loss_plot, accuracy_plot, job_status], api_visibility="private")
        poll_out = [jobs_df, loss_plot, accuracy_plot, job_status, timer]
        timer.tick(ft.poll, job_sel, poll_out, show_progress="hidden", api_visibility="private", **AT_ONCE)
        ft_tab.select(ft.tab_opened, job_sel, [*poll_out, job_sel], api_visibility="private", **AT_ONCE)
        for tab in (pg_tab, cv_tab, rp_tab):
            tab.select(ft.tab_closed, None, timer, api_visibility="private", queue=False)

        # ---- Curves events
        cv = cb.curves
        section.change(cv.section_changed, section, [param, start, stop, step, param_help], api_visibility="private")
        param.input(cv.param_changed, [section, param], [start, stop, step, param_help], api_visibility="private")
        section2.change(cv.second_changed, [section2, section, param], param2, api_visibility="private")
        demo.load(cv.section_changed, section, [param, start, stop, step, param_help], api_visibility="private")
        sw = sweep_btn.click(cb.collect_variants, ui["controls"], variants_box, queue=False, api_visibility="private")
        sw.then(cv.run, [prompt, seed, model, variants_box, section, param, start, stop, step, section2, param2,
                         values2, source, n_prompts, metric],
                [plot, table, curves_run, curves_status, metric], api_name="sweep", **DEVICE)
        sweep_cancel.click(cb.cancel, None, sweep_cancel_note, api_visibility="private", queue=False)
        sweep_btn.click(lambda: "", None, sweep_cancel_note, queue=False, api_visibility="private")
        metric.input(cv.outputs, [curves_run, metric], [plot, table, curves_run, curves_status, metric],
                     api_visibility="private")
        table.select(cv.point_selected, curves_run, [point_pair, point_md], api_visibility="private")
        cv_tab.select(cv.quant_maps, model, quant_maps, api_visibility="private", **AT_ONCE)

        gr.api(ft.api_start, api_name="finetune_preset")
        gr.api(ft.api_job, api_name="job")

        # ---- Report events
        export_btn.click(cb.export, [export_source, comparison, curves_run, prompt, seed],
                         [zip_btn, html_btn, report_status, preview], api_name="export")
    demo.queue(default_concurrency_limit=4, max_size=64)
    return demo
