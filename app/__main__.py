"""python -m app [--model shapes] [--host 127.0.0.1] [--port 7860] [--store PATH] [limits]: the Speedlab workbench.

Limits (stricter than the CLI's, since anyone who reaches the page can ask): --max-steps, --max-pixels and
--time-limit per generation; --max-jobs and --max-job-minutes for fine-tunes, whose data paths must lie in the
store, assets/ or a --data-root."""

from __future__ import annotations

import argparse
import os
import sys
import threading

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    parser.add_argument("--model", default="shapes", help="model shown first: shapes (default), tiny-arch, "
                        "sd15-arch, a local diffusers folder or a cached Hub id")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 only "
                        "when you mean to expose it)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="torch CPU threads for generation (default: all cores but one, which fine-tune "
                        "workers use; oversubscribed cores make torch very slow)")
    parser.add_argument("--store", default="runs/workbench", help="results store folder: fine-tune jobs, "
                        "checkpoints, reports (default runs/workbench)")
    parser.add_argument("--max-steps", type=int, default=200, help="most denoising steps per image (default 200)")
    parser.add_argument("--max-pixels", type=int, default=768 * 768,
                        help="most pixels (height × width) per image (default 589824 = 768×768)")
    parser.add_argument("--time-limit", type=float, default=300.0,
                        help="seconds one generation or sweep may run before it is stopped (default 300)")
    parser.add_argument("--max-jobs", type=int, default=1, help="fine-tunes running at once (default 1)")
    parser.add_argument("--max-job-minutes", type=float, default=30.0,
                        help="training minutes one fine-tune may ask for (default 30)")
    parser.add_argument("--data-root", action="append", default=[],
                        help="a folder fine-tune data may be read from, besides the store and assets/ (repeatable)")
    return parser.parse_args(argv)


def limits_from(args: argparse.Namespace):
    """(generation limits, job limits) from the flags; ValueError naming a flag out of range."""
    from backend.runs.compare import Limits
    from backend.runs.jobs import JobLimits
    from backend.runs.knobs import ASSETS

    for flag, value, low in (("--max-steps", args.max_steps, 1), ("--max-pixels", args.max_pixels, 64),
                             ("--time-limit", args.time_limit, 1), ("--max-jobs", args.max_jobs, 1),
                             ("--max-job-minutes", args.max_job_minutes, 0.1)):
        if not value >= low or value != value or value == float("inf"):
            raise ValueError(f"{flag} {value} is out of range; allowed: a finite number ≥ {low}")
    return (Limits(args.max_steps, args.max_pixels, args.time_limit),
            JobLimits(args.max_jobs, args.max_job_minutes, (str(ASSETS), *args.data_root)))


def check_args(args: argparse.Namespace) -> None:
    """ValueError naming --port out of range or a --store folder that cannot be written (a file, read-only)."""
    from backend.paths import check_out_dir

    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port {args.port} is out of range; allowed: 1 to 65535")
    check_out_dir(args.store, "--store")


def create(model: str = "shapes", store: str = "runs/workbench", limits=None, job_limits=None):
    """The Gradio Blocks of the workbench (not launched) and its callbacks."""
    from app.callbacks import Callbacks
    from app.ui import build_demo

    if limits is None or job_limits is None:  # the defaults of the flags
        default_limits, default_jobs = limits_from(parse_args([]))
        limits, job_limits = limits or default_limits, job_limits or default_jobs
    cb = Callbacks(model=model, store=store, limits=limits, job_limits=job_limits)
    demo = build_demo(cb)
    return demo, cb


def launch(demo, host: str = "127.0.0.1", port: int | None = 7860, **kwargs):
    # _frontend=False skips Gradio's start-up probe of its own URL (one HEAD request with a 3 s timeout), which
    # fails spuriously on a saturated CPU and then demands a public share link; we never want one.
    from app.ui import CSS

    return demo.launch(server_name=host, server_port=port, ssr_mode=False, css=CSS,
                       footer_links=["api"], quiet=kwargs.pop("quiet", False), share=False, _frontend=False,
                       **kwargs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads < 1:
        print(f"error: --threads {args.threads} must be ≥ 1", file=sys.stderr)
        return 2
    try:
        limits, job_limits = limits_from(args)
        check_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    demo, cb = create(args.model, args.store, limits, job_limits)

    def warm() -> None:  # load the model while the browser opens the page
        try:
            from backend.models import load_pipeline

            load_pipeline(args.model)
        except Exception as exc:
            print(f"warning: model {args.model!r} cannot be loaded yet: {exc}", file=sys.stderr)

    threading.Thread(target=warm, daemon=True).start()
    launch(demo, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
