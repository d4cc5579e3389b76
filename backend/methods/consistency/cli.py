"""``python -m backend finetune lcd``: distil a Variant's model into a 1–8 step LCM (optionally reward-guided).

    python -m backend finetune lcd --variant V [--reward shapes --beta B] [--proxy] [--lora] --minutes M --out DIR

The student is written to DIR (a stock pipeline folder of the model's family with its LCM sampler, or a LoRA with
--lora; U-Nets, PixArt and SD3: backend/methods/consistency/students.py); use it
with ``"scheduler": "lcm", "steps": 1-8, "consistency": {"checkpoint": DIR}``. Training checkpoints go to
DIR.partial every --checkpoint-every seconds (each renamed into place whole); Ctrl-C saves one, and the same
command resumes from the last one (also after a kill).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from backend.methods.consistency.config import LOSSES, REWARDS, DistillConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--variant", required=True, help="the teacher: a Variant (JSON or file); model, device, "
                        "dtype and guidance are used")
    parser.add_argument("--out", required=True, help="folder for the student (must not exist yet)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget in minutes (default 10)")
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (default: time only)")
    parser.add_argument("--reward", default="none", help=f"reward model: {', '.join(REWARDS)} (default none)")
    parser.add_argument("--beta", type=float, default=None, help="reward weight β ≥ 0 (default 1 with a reward)")
    parser.add_argument("--proxy", action="store_true", help="optimise the latent proxy reward model (needs --reward)")
    parser.add_argument("--lora", action="store_true", help="LCM-LoRA instead of a full student")
    parser.add_argument("--batch-size", type=int, default=None, help="latents per step")
    parser.add_argument("--lr", type=float, default=None, help="learning rate")
    parser.add_argument("--lr-decay", action="store_true", help="decay the lr linearly to 0 over the budget")
    parser.add_argument("--w-min", type=float, default=None, help="lowest CFG scale w (LCM form = guidance − 1)")
    parser.add_argument("--w-max", type=float, default=None, help="highest CFG scale w")
    parser.add_argument("--num-ddim-timesteps", type=int, default=None, help="solver grid size N (default 50)")
    parser.add_argument("--loss", choices=LOSSES, default=None, help="distillation loss (default huber)")
    parser.add_argument("--data", default=None, help="auto | shapes[:train|two|hard] | teacher[:PROMPTS.txt] | "
                        "folder of images+.txt (shapes:hard: the `hard` set's mix of two-object and compositional "
                        "scenes; auto: Shapes renders for a Shapes model, else teacher samples of the built-in general "
                        "captions, backend/data/general_captions.txt)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--checkpoint-every", type=float, default=None,
                        help="seconds between training checkpoints in OUT.partial (default 120)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def config_from_args(args: argparse.Namespace) -> DistillConfig:
    raw = {"minutes": args.minutes, "max_steps": args.max_steps, "reward": args.reward, "proxy": args.proxy,
           "lora": args.lora, "lr_decay": args.lr_decay}
    if args.beta is not None:
        raw["beta"] = args.beta
    elif args.reward == "none":
        raw["beta"] = 0.0
    for key in ("batch_size", "lr", "w_min", "w_max", "num_ddim_timesteps", "loss", "data", "seed"):
        if getattr(args, key) is not None:
            raw[key] = getattr(args, key)
    if args.checkpoint_every is not None:
        raw["checkpoint_every_s"] = args.checkpoint_every
    return DistillConfig.from_dict(raw)


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from backend.core import JobControl
    from backend.methods.consistency.distill import distill
    from backend.paths import check_out_dir
    from backend.sampling import load_model
    from backend.variant import Variant

    try:
        cfg = config_from_args(args)
        variant = Variant.parse(args.variant)
        check_out_dir(args.out, "--out", must_be_new=True)
        pipe = load_model(variant)
        from backend.methods.registry import method
        from backend.models import model_family

        refusal = method("consistency").refusal(model_family(pipe))
        if refusal:
            raise ValueError(f"finetune lcd: {refusal}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cancel = threading.Event()
    total = cfg.max_steps or None
    bars: list = []  # made on the first report, so a bad setting fails before any bar is drawn

    def on_progress(fields: dict) -> None:
        if not bars:
            bars.append(tqdm(total=total or int(cfg.minutes * 60), unit="step" if total else "s", desc="lcd",
                             file=sys.stderr))
        bar = bars[0]
        bar.n = fields["step"] if total else min(bar.total, int(fields.get("minutes", 0) * 60))
        bar.set_postfix({k: fields[k] for k in ("step", "loss", "reward", "proxy_agree") if k in fields},
                        refresh=False)
        bar.refresh()

    previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    try:
        summary = distill(pipe, cfg, args.out, JobControl(on_progress=on_progress, cancel=cancel),
                          guidance=variant.guidance)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, previous)
        for bar in bars:
            bar.close()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return 0 if summary["status"] == "done" else 130
