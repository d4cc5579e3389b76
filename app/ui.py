"""The workbench layout: Playground, Fine-tune, Curves and Report tabs. Controls come from the methods'
declared parameters (app.controls); handlers are app.callbacks; the device is one queue slot."""

from __future__ import annotations

import gradio as gr

from app.callbacks import N_COLUMNS, Callbacks
from app.controls import make_control
from backend.runs import workbench as wb

DEFAULT_PROMPT = "a small red circle in the center"
# What each variant column shows when the page opens (plain Variant values; any column can be changed).
COLUMN_PRESETS = [
    {"name": "baseline", "on": True},
    {"name": "DeepCache N=3", "on": True, "deepcache": {"interval": 3}},
    {"name": "DeepCache N=5", "on": False, "deepcache": {"interval": 5}},
    {"name": "PTQ W8A8", "on": False, "quant": {"weight_bits": 8, "act_bits": 8}},
    {"name": "variant 4", "on": False},
]
DEVICE = {"concurrency_id": "device", "concurrency_limit": 1}  # one generation on the device at a time
CSS = ".speedlab-image img {image-rendering: pixelated}"


def build_demo(cb: Callbacks) -> gr.Blocks:
    try:
        defaults = wb.model_defaults_for(cb.model)
    except Exception:  # the page still opens; Generate shows the model's error
        defaults = {}
    steps0, guidance0 = int(defaults.get("steps", 25)), float(defaults.get("guidance", 5.0))

    with gr.Blocks(title="Speedlab workbench") as demo:
        gr.Markdown("## Speedlab workbench — the baseline and accelerated variants, same prompt and seed")
        comparison = gr.State([])
        curves = gr.State([])
        with gr.Tab("Playground"):
            with gr.Row():
                prompt = gr.Textbox(label="Prompt", value=DEFAULT_PROMPT, scale=4, elem_id="prompt")
                seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, scale=1)
                model = gr.Dropdown(list(dict.fromkeys([cb.model, *wb.MODELS])), value=cb.model, label="Model",
                                    allow_custom_value=True, scale=2,
                                    info="shapes, tiny-arch, sd15-arch, a local diffusers folder or a cached Hub id")
            with gr.Row():
                generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
            status = gr.Markdown(elem_id="status", label="status")
            controls, images, captions, steps_c, guidance_c, ckpt_controls = [], [], [], [], [], []
            with gr.Row(equal_height=False):
                for col in range(N_COLUMNS):
                    preset = COLUMN_PRESETS[col]
                    with gr.Column(min_width=180):
                        images.append(gr.Image(label=preset["name"], type="numpy", format="png", interactive=False,
                                               height=200, elem_id=f"image-{col}", elem_classes="speedlab-image"))
                        captions.append(gr.Markdown(elem_id=f"caption-{col}", label=f"caption {col}"))
                        enabled = gr.Checkbox(value=preset["on"], label="use this column", visible=col > 0,
                                              interactive=col > 0)
                        name = gr.Textbox(value=preset["name"], label="name", max_lines=1)
                        with gr.Accordion("sampling", open=col == 0):
                            scheduler = gr.Dropdown(["default", *wb.SCHEDULERS], value="default", label="scheduler")
                            steps = gr.Slider(1, 100, step=1, value=steps0, label="steps")
                            guidance = gr.Slider(0.0, 20.0, step=0.5, value=guidance0, label="guidance")
                        steps_c.append(steps)
                        guidance_c.append(guidance)
                        controls += [enabled, name, scheduler, steps, guidance]
                        if col == 0:
                            continue
                        for section, params in cb.columns_layout():
                            values = preset.get(section, {})
                            with gr.Accordion(section, open=section in preset):
                                on = gr.Checkbox(value=section in preset, label=f"{section} on")
                                comps = [make_control(p, values.get(p["name"]), slider_cap=64,
                                                      checkpoints=cb.jobs.checkpoints(cb.model, section))
                                         for p in params]
                            controls += [on, *comps]
                            ckpt_controls += [c for p, c in zip(params, comps, strict=True)
                                              if p["name"] == "checkpoint"]
            with gr.Row():
                pair_a = gr.Dropdown(label="before", choices=[], interactive=True)
                pair_b = gr.Dropdown(label="after", choices=[], interactive=True)
            pair = gr.ImageSlider(label="before / after", type="numpy", height=320, elem_classes="speedlab-image")
            with gr.Accordion("results (JSON) and the variants sent", open=False):
                results = gr.JSON(label="results")
                variants_box = gr.Textbox(label="variants (JSON: the baseline first)", lines=4,
                                          elem_id="variants")

        with gr.Tab("Fine-tune"):
            with gr.Row():
                kind = gr.Radio(list(wb.JOB_KINDS), value="efficientdm", label="method",
                                info="EfficientDM: low-bit quantization-aware LoRA; LCD / RG-LCD: 1-8 step students")
                preset_c = gr.Radio(list(wb.PRESET_NAMES), value=wb.PRESET_NAMES[0], label="preset")
                ft_model = gr.Textbox(value=cb.model, label="model", max_lines=1)
            with gr.Accordion("advanced settings", open=False):
                groups, job_controls = [], []
                for k in ("efficientdm", "lcd"):
                    values = wb.preset(k, wb.PRESET_NAMES[0])
                    with gr.Group(visible=k == "efficientdm") as group:
                        job_controls += [make_control(p, values[p["name"]]) for p in wb.job_params(k)]
                    groups.append(group)
            with gr.Row():
                start_btn = gr.Button("Start fine-tune", variant="primary", elem_id="start-finetune")
                job_sel = gr.Dropdown(label="job", choices=[], interactive=True, allow_custom_value=True)
                job_id = gr.Textbox(label="started job", interactive=False, max_lines=1)
                cancel_job_btn = gr.Button("Cancel job", variant="stop")
            job_status = gr.Markdown()
            loss_plot = gr.LinePlot(x="step", y="loss", label="loss", height=260)
            jobs_df = gr.Dataframe(label="jobs (kept in the results store)", interactive=False)
            known_ckpts = gr.State(None)
            timer = gr.Timer(2.0)

        with gr.Tab("Curves"):
            with gr.Row():
                section = gr.Dropdown(cb.sweep_sections(), value="deepcache", label="method")
                param = gr.Dropdown([], label="parameter")
                start = gr.Number(label="from")
                stop = gr.Number(label="to")
                step = gr.Number(label="step", value=1)
                n_prompts = gr.Slider(1, 4, step=1, value=1, label="prompts")
            param_help = gr.Markdown()
            with gr.Row():
                sweep_btn = gr.Button("Run sweep", variant="primary")
                sweep_cancel = gr.Button("Cancel", variant="stop")
                clear_btn = gr.Button("Clear curves")
            curves_status = gr.Markdown()
            with gr.Row():
                plot = gr.Plot(label="latency vs quality (PSNR vs the baseline), Pareto front dashed")
                method_plot = gr.Plot(label="per-method curves")
            table = gr.Dataframe(label="points (select a row to see its image)", interactive=False)
            point_md = gr.Markdown()
            point_pair = gr.ImageSlider(label="baseline / selected point", type="numpy", height=320,
                                        elem_classes="speedlab-image")

        with gr.Tab("Report"):
            source = gr.Radio(["Playground comparison", "Curves sweep"], value="Playground comparison",
                              label="export")
            export_btn = gr.Button("Export report", variant="primary")
            report_status = gr.Markdown()
            with gr.Row():
                zip_btn = gr.DownloadButton("Download zip bundle", visible=False)
                html_btn = gr.DownloadButton("Download HTML report", visible=False)

        # ---- Playground events
        gen = generate_btn.click(cb.collect_variants, controls, variants_box, queue=False,
                                 api_visibility="private")
        run = gen.then(cb.generate, [prompt, seed, model, variants_box],
                       [*images, *captions, results, status, comparison], api_name="generate", **DEVICE)
        run.then(cb.pair_choices, comparison, [pair_a, pair_b, pair], api_visibility="private")
        cancel_btn.click(cb.cancel, None, status, queue=False, api_name="cancel")
        for dd in (pair_a, pair_b):
            dd.change(cb.pair, [comparison, pair_a, pair_b], pair, api_visibility="private", queue=False)
        model.change(cb.model_changed, model, [*steps_c, *guidance_c, *ckpt_controls, status],
                     api_visibility="private")

        # ---- Fine-tune events
        for trigger in (kind.change, preset_c.change):
            trigger(cb.job_kind_changed, [kind, preset_c], [*groups, *job_controls], api_visibility="private")
        start_btn.click(cb.start_job, [kind, ft_model, *job_controls], [job_sel, job_id], api_name="finetune")
        cancel_job_btn.click(cb.cancel_job, job_sel, job_status, api_name="cancel_finetune")
        job_sel.change(cb.job_view, job_sel, [loss_plot, job_status], api_visibility="private")
        timer.tick(cb.poll, [job_sel, known_ckpts, model], [jobs_df, loss_plot, job_status, known_ckpts,
                                                            *ckpt_controls],
                   show_progress="hidden", api_visibility="private", concurrency_id="poll",
                   concurrency_limit=None)
        demo.load(cb.job_choices, None, job_sel, api_visibility="private")

        # ---- Curves events
        section.change(cb.sweep_section_changed, section, [param, start, stop, step, param_help],
                       api_visibility="private")
        param.input(cb.sweep_param_changed, [section, param], [start, stop, step, param_help],
                    api_visibility="private")
        demo.load(cb.sweep_section_changed, section, [param, start, stop, step, param_help],
                  api_visibility="private")
        sw = sweep_btn.click(cb.collect_variants, controls, variants_box, queue=False, api_visibility="private")
        sw.then(cb.run_sweep, [prompt, seed, model, variants_box, section, param, start, stop, step, n_prompts,
                               curves], [plot, method_plot, table, curves, curves_status], api_name="sweep", **DEVICE)
        sweep_cancel.click(cb.cancel, None, curves_status, queue=False, api_visibility="private")
        clear_btn.click(lambda: cb.curves_outputs([]), None, [plot, method_plot, table, curves, curves_status],
                        api_visibility="private")
        table.select(cb.point_selected, curves, [point_pair, point_md], api_visibility="private")

        gr.api(cb.api_finetune, api_name="finetune_preset")
        gr.api(cb.api_job, api_name="job")

        # ---- Report events
        export_btn.click(cb.export, [source, comparison, curves, prompt, seed], [zip_btn, html_btn, report_status],
                         api_name="export")
    demo.queue(default_concurrency_limit=4, max_size=64)
    return demo
