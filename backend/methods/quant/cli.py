"""``python -m backend finetune efficientdm``: fine-tune a low-bit U-Net with EfficientDM (or full QAT).

    python -m backend finetune efficientdm --variant V --w-bits 4 --a-bits 4 --minutes M --out DIR

DIR becomes a quantized checkpoint (packed integer weights, per-step activation scales); use it with
``"quant": {"checkpoint": DIR}`` in any Variant of the same model. Checkpoints are written every
--checkpoint-every seconds and on Ctrl-C; running the same command again resumes from DIR
(--restart starts over). --method qat runs the full-QAT baseline (LSQ on all weights, no LoRA).
The layer-policy flags (--quantize-skip, --quantize-downsample, --[no-]first-last-8bit,
--[no-]quantize-attn-matmul) set what the Variant's quant section would; by default the paper's policy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import signal
import sys
import threading

from backend.captions import read_prompts
from backend.methods.params import cli_help
from backend.methods.quant.config import LAYER_POLICY_KEYS, SIDE_POLICIES, FinetuneConfig, QuantConfig


def _help(name: str, config: type = FinetuneConfig) -> str:
    return cli_help(config, name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--variant", required=True, help="the FP teacher: a Variant (JSON or file) without a quant "
                        "section; model, device and dtype are used")
    parser.add_argument("--out", required=True, help="checkpoint directory (resumed from when it holds one)")
    parser.add_argument("--method", choices=("efficientdm", "qat"), default="efficientdm", help=_help("method"))
    parser.add_argument("--w-bits", type=int, default=4, help=_help("weight_bits"))
    parser.add_argument("--a-bits", type=int, default=4, help=_help("act_bits"))
    parser.add_argument("--minutes", type=float, default=15.0, help=_help("minutes"))
    parser.add_argument("--max-iters", type=int, default=None, help=_help("max_iters"))
    parser.add_argument("--train-steps", type=int, default=None, help=_help("train_steps"))
    parser.add_argument("--batch-size", type=int, default=None, help=_help("batch_size"))
    parser.add_argument("--lora-rank", type=int, default=None, help=_help("lora_rank"))
    parser.add_argument("--lora-lr-scale", type=float, default=None, help=_help("lora_lr_scale"))
    parser.add_argument("--act-lr", type=float, default=None, help=_help("act_lr"))
    parser.add_argument("--qat-lr", type=float, default=None, help=_help("qat_lr"))
    parser.add_argument("--train-first-last", action=argparse.BooleanOptionalAction, default=None,
                        help=_help("train_first_last"))
    parser.add_argument("--guidance", type=float, default=None, help=_help("guidance"))
    parser.add_argument("--distill-target", choices=("guided", "branches"), default=None,
                        help=_help("distill_target"))
    parser.add_argument("--checkpoint-every", type=float, default=None, help=_help("checkpoint_every_s"))
    parser.add_argument("--seed", type=int, default=None, help=_help("seed"))
    parser.add_argument("--quantize-skip", choices=SIDE_POLICIES, default=None,
                        help=_help("quantize_skip", QuantConfig))
    parser.add_argument("--quantize-downsample", choices=SIDE_POLICIES, default=None,
                        help=_help("quantize_downsample", QuantConfig))
    parser.add_argument("--first-last-8bit", action=argparse.BooleanOptionalAction, default=None,
                        help=_help("first_last_8bit", QuantConfig))
    parser.add_argument("--quantize-attn-matmul", action=argparse.BooleanOptionalAction, default=None,
                        help=_help("quantize_attn_matmul", QuantConfig))
    parser.add_argument("--prompts", default=None, help="a text file of prompts, one a line (default: the model's "
                        "prompt set for shapes-sd, a built-in list otherwise)")
    parser.add_argument("--watch-every", type=float, default=2.0, help="minutes of training between judged "
                        "evaluations of the student on --watch-n hard prompts, with a warning when its prompt accuracy "
                        "falls while the loss falls (Shapes-world models; 0: off; default 2)")
    parser.add_argument("--watch-n", type=int, default=16, help="prompts of the watch's evaluations (default 16)")
    parser.add_argument("--restart", action="store_true", help="ignore a checkpoint already in --out")
    parser.add_argument("--summary", action="store_true", help="print the per-layer precision table at the end")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    raw = {"method": args.method, "weight_bits": args.w_bits, "act_bits": args.a_bits, "minutes": args.minutes}
    pairs = {"max_iters": "max_iters", "train_steps": "train_steps", "batch_size": "batch_size",
             "lora_rank": "lora_rank", "lora_lr_scale": "lora_lr_scale", "act_lr": "act_lr", "qat_lr": "qat_lr",
             "guidance": "guidance", "distill_target": "distill_target", "checkpoint_every": "checkpoint_every_s",
             "seed": "seed", "train_first_last": "train_first_last"}
    for arg, key in pairs.items():
        if getattr(args, arg) is not None:
            raw[key] = getattr(args, arg)
    for key in ("weight_bits", "act_bits"):
        value = raw[key]
        if not 2 <= value <= 8:
            flag = "--w-bits" if key == "weight_bits" else "--a-bits"
            raise ValueError(f"{flag} {value} is not allowed; allowed: 2 to 8")
    return FinetuneConfig.from_dict(raw)


def quant_from_args(args: argparse.Namespace, ft: FinetuneConfig) -> QuantConfig | None:
    """The student's layer policy from the policy flags (QuantConfig defaults for the others); None when no
    flag is given (the paper's policy, or the resumed checkpoint's)."""
    given = {key: getattr(args, key) for key in LAYER_POLICY_KEYS if getattr(args, key) is not None}
    return ft.quant_config(**given) if given else None


def main(args: argparse.Namespace) -> int:
    from backend.core import JobControl
    from backend.methods.quant.checkpoint import check_out
    from backend.methods.quant.model import summary
    from backend.methods.quant.train import finetune, progress_bar
    from backend.methods.quant.watch import make_watch
    from backend.sampling import load_model, seeded_sampler
    from backend.variant import Variant

    ft = config_from_args(args)
    quant = quant_from_args(args, ft)
    variant = Variant.parse(args.variant)
    if "quant" in variant.sections:
        raise ValueError("--variant already has a quant section; give the FP teacher (drop \"quant\")")
    prompts = read_prompts(args.prompts) if args.prompts is not None else None
    out = check_out(args.out)
    pipe = load_model(variant)
    if args.restart and out.exists():
        shutil.rmtree(out)
    start = quant or ft.quant_config()
    if quant is None and (out / "quant_config.json").exists():  # resuming: the checkpoint's own policy
        from backend.methods.quant.checkpoint import config_from_meta, read_meta

        start = dataclasses.replace(config_from_meta(read_meta(out), out), method="ptq", checkpoint="")
    watch = make_watch(pipe, seeded_sampler(pipe), args.watch_every, args.watch_n, start, settle_iters=ft.train_steps)
    cancel = threading.Event()
    bar, move_bar = progress_bar(ft, f"{ft.method} W{ft.weight_bits}A{ft.act_bits}", disable=args.json)

    def on_progress(fields: dict) -> None:
        move_bar(fields)
        if watch is not None:
            watch.observe(fields)

    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame) -> None:  # first Ctrl-C: checkpoint and stop; second: default
        cancel.set()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, on_sigint)
    try:
        result = finetune(pipe, ft, out, job=JobControl(on_progress=on_progress, cancel=cancel), prompts=prompts,
                          quant=quant, on_eval=watch, eval_every_s=args.watch_every * 60 if watch else None)
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.close()
    student = result.pop("student")
    from backend.methods.quant.checkpoint import checkpoint_size_mb

    result["model_size_mb"] = round(checkpoint_size_mb(out), 4)
    result["use_with"] = {"model": variant.model, "quant": {"checkpoint": str(out)}}
    if watch is not None:
        result["quality_curve"], result["warnings"] = watch.curve, watch.warnings
    if args.summary:
        print(summary(student), file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['status']}: {result['iters']} iterations in {result['minutes']:.1f} min, loss "
              f"{result['loss']}; checkpoint {out} ({result['model_size_mb']} MB). Use it with "
              f"'{json.dumps(result['use_with'])}'" + ("; run the same command to resume" if
                                                       result["status"] == "cancelled" else ""))
    return 130 if result["status"] == "cancelled" else 0
