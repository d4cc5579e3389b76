"""Speedlab command line: python -m backend {generate,evaluate,finetune,sweep,report,bench} ..."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from pathlib import Path

from tqdm import tqdm

# Sub-commands implemented elsewhere: module with add_arguments(parser) and main(args) -> int.
FINETUNE = {"efficientdm": "backend.methods.quant.cli", "lcd": "backend.methods.consistency.cli"}
EXTERNAL = {"sweep": "backend.runs.sweep", "report": "backend.reports.cli"}
BENCHES = ("world", "deepcache", "quant", "lcm", "deploy")


def jsonable(value):
    """JSON-safe copy: infinities become the string "inf" (PSNR of identical images)."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


class LazyBar:
    """A tqdm bar created on the first update, so errors raised before any progress print alone."""

    def __init__(self, desc: str, unit: str = "img", disable: bool = False):
        self.desc, self.unit, self.disable, self.bar = desc, unit, disable, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=sys.stderr, disable=self.disable)
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_generate(args) -> int:
    from PIL import Image

    from backend.runs.build import build_pipeline, generate
    from backend.runs.variant import Variant

    variant = Variant.parse(args.variant)
    if not args.prompt.strip():
        raise ValueError("--prompt is empty; give a non-empty text prompt")
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"--out {args.out!r} must end in .png or .jpg")
    pipe = build_pipeline(variant)
    bar = LazyBar("denoising", unit="step", disable=args.json)
    start = time.perf_counter()
    image = generate(pipe, variant, [args.prompt], [args.seed], on_step=bar)[0]
    seconds = time.perf_counter() - start
    bar.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp" + out.suffix)
    Image.fromarray((image * 255).round().astype("uint8")).save(tmp)
    tmp.replace(out)
    info = {"out": str(out), "prompt": args.prompt, "seed": args.seed, "latency_s": seconds,
            "family": pipe.speedlab_family, "variant": variant.to_dict()}
    kernels = getattr(pipe, "speedlab_kernels", None)
    if kernels:
        info["kernels"] = kernels
    print(json.dumps(info) if args.json else f"wrote {out} in {seconds:.2f} s ({pipe.speedlab_family})"
          + (f" ({kernels})" if kernels else ""))
    return 0


def cmd_evaluate(args) -> int:
    from backend.captions import read_prompts
    from backend.runs.runner import evaluate_variant
    from backend.runs.variant import Variant

    variant = Variant.parse(args.variant)
    baseline = Variant.parse(args.baseline) if args.baseline else None
    prompts = read_prompts(args.prompts) if args.prompts else None
    scorer_names = [s.strip() for s in args.scorers.split(",") if s.strip()] if args.scorers else None
    bar = LazyBar("evaluate", disable=args.json)
    result = evaluate_variant(variant, baseline, n=args.n, prompt_set_name=args.set, seed=args.seed,
                              repeats=args.repeats, on_progress=bar, prompts=prompts, scorer_names=scorer_names)
    bar.close()
    if args.json:
        print(json.dumps(jsonable(result)))
    else:
        for key, value in result.items():
            print(f"{key:>18}: {value}")
    return 0


def cmd_bench(args) -> int:
    from backend.bench.common import print_rows, write_report

    module = importlib.import_module(f"backend.bench.{args.bench}")
    rows = module.run(args)
    path = write_report(args.bench, rows, " ".join(["python -m backend"] + sys.argv[1:]))
    print_rows(rows, as_json=args.json)
    print(f"table written to {path}", file=sys.stderr)
    return 0


def _add_external(sub, name: str, module_name: str, help: str) -> None:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        p = sub.add_parser(name, help=f"{help} (not available in this build)")
        p.set_defaults(func=lambda a: _unavailable(name))
        return
    p = sub.add_parser(name, help=help, description=module.__doc__)
    module.add_arguments(p)
    p.set_defaults(func=module.main)


def _unavailable(name: str) -> int:
    raise ValueError(f"{name!r} is not available in this build")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="one image for a prompt and seed")
    p.add_argument("--variant", required=True, help="Variant as JSON text or a JSON file path")
    p.add_argument("--prompt", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output image (.png/.jpg)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("evaluate", help="quality and cost of a variant on a Shapes prompt set")
    p.add_argument("--variant", required=True, help="Variant as JSON text or a JSON file path")
    p.add_argument("--baseline", help="baseline Variant for psnr/ssim_vs_baseline and speedup")
    p.add_argument("--n", type=int, default=200, help="number of prompts (default 200)")
    p.add_argument("--set", default="single", choices=["single", "two", "compositional"], help="prompt set")
    p.add_argument("--seed", type=int, default=0, help="first seed; prompt i uses seed+i")
    p.add_argument("--repeats", type=int, default=3, help="timed one-image repeats after warm-up")
    p.add_argument("--prompts", help="a UTF-8 text file of your prompts, one a line (the first --n are used); "
                   "on a model without the Shapes judge, quality is psnr/ssim vs --baseline plus the scorers")
    p.add_argument("--scorers", help="comma list of scorers to require (psnr_vs_baseline, ssim_vs_baseline, "
                   "lpips_vs_baseline, clip_score, pickscore); each must have its weights local")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("finetune", help="fine-tune a student: efficientdm | lcd")
    fsub = p.add_subparsers(dest="method", required=True)
    for name, module_name in FINETUNE.items():
        _add_external(fsub, name, module_name, f"{name} fine-tuning")

    for name, module_name in EXTERNAL.items():
        _add_external(sub, name, module_name, name)

    p = sub.add_parser("bench", help="side-by-side benchmarks; writes docs/bench-NAME.md")
    bsub = p.add_subparsers(dest="bench", required=True)
    for name in BENCHES:
        try:
            module = importlib.import_module(f"backend.bench.{name}")
        except ImportError:
            continue
        bp = bsub.add_parser(name, help=(module.__doc__ or name).strip().splitlines()[0])
        module.add_arguments(bp)
        bp.add_argument("--json", action="store_true", help="JSON rows on stdout")
        bp.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
