"""python -m app [--model shapes] [--host 127.0.0.1] [--port 7860] [--store PATH]: the Speedlab workbench."""

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
    return parser.parse_args(argv)


def create(model: str = "shapes", store: str = "runs/workbench"):
    """The Gradio Blocks of the workbench (not launched) and its callbacks."""
    from app.callbacks import Callbacks
    from app.ui import CSS, build_demo

    cb = Callbacks(model=model, store=store)
    demo = build_demo(cb)
    demo.speedlab_css = CSS
    return demo, cb


def launch(demo, host: str = "127.0.0.1", port: int | None = 7860, **kwargs):
    # _frontend=False skips Gradio's start-up probe of its own URL (one HEAD request with a 3 s timeout), which
    # fails spuriously on a saturated CPU and then demands a public share link; we never want one.
    return demo.launch(server_name=host, server_port=port, ssr_mode=False, css=getattr(demo, "speedlab_css", None),
                       footer_links=["api"], quiet=kwargs.pop("quiet", False), share=False, _frontend=False,
                       **kwargs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads < 1:
        print(f"error: --threads {args.threads} must be ≥ 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    demo, cb = create(args.model, args.store)

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
