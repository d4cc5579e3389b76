"""Speedlab command line: python -m backend {generate,evaluate,schema,finetune,sweep,report,bench} ..."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path

from safetensors import SafetensorError
from tqdm import tqdm

from backend.core import jsonable
from backend.metadata import pipeline_info
from backend.methods import registry
from backend.world.prompts import DEFAULT_SET, PROMPT_SETS

# Sub-commands implemented elsewhere: module with add_arguments(parser) and main(args) -> int. The fine-tune
# sub-commands are the registry's (backend.methods.registry).
EXTERNAL = {"sweep": "backend.runs.sweep", "report": "backend.reports.cli", "tune": "backend.tune.cli"}
BENCHES = ("world", "deepcache", "quant", "lcm", "deploy", "peers", "tune")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: COMMAND: argument --flag: what is wrong`` and exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: str) -> str:
    """Whitespace and line breaks collapsed: every error is printed as exactly one line."""
    return " ".join(str(text).split()) or "error"


def seed_arg(text: str) -> int:
    """argparse type of --seed: a whole number in the allowed range, named when it is not."""
    from backend.methods.params import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number; allowed: 0 to {MAX_SEED}") from None
    if not 0 <= value <= MAX_SEED:
        shown = text if len(text) <= 40 else f"{value:.3e}"
        raise argparse.ArgumentTypeError(f"{shown} is out of range; allowed: 0 to {MAX_SEED}")
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

    from backend.paths import check_out_file
    from backend.runs.build import build_pipeline
    from backend.sampling import generate
    from backend.variant import Variant

    variant = Variant.parse(args.variant)
    if not args.prompt.strip():
        raise ValueError("--prompt is empty; give a non-empty text prompt")
    out = check_out_file(args.out, "--out", (".png", ".jpg", ".jpeg"))
    pipe = build_pipeline(variant)
    bar = LazyBar("denoising", unit="step", disable=args.json)
    start = time.perf_counter()
    image = generate(pipe, variant, [args.prompt], [args.seed], on_step=bar)[0]
    seconds = time.perf_counter() - start
    bar.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp" + out.suffix)
    try:
        Image.fromarray((image * 255).round().astype("uint8")).save(tmp)
        tmp.replace(out)
    except BaseException:  # a full disk or a kill: no half-written image left behind
        tmp.unlink(missing_ok=True)
        raise
    meta = pipeline_info(pipe)
    info = {"out": str(out), "prompt": args.prompt, "seed": args.seed, "latency_s": seconds,
            "family": meta.family, "variant": variant.to_dict()}
    if meta.kernels:
        info["kernels"] = meta.kernels
    print(json.dumps(info) if args.json else f"wrote {out} in {seconds:.2f} s ({meta.family})"
          + (f" ({meta.kernels})" if meta.kernels else ""))
    return 0


def cmd_evaluate(args) -> int:
    from backend.captions import read_prompts
    from backend.runs.runner import evaluate_variant
    from backend.variant import Variant

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
            if isinstance(value, dict) and "verdict" in value:
                value = f"{value['delta']:+.4g}: {value['verdict']}"
            print(f"{key:>22}: {value}")
    return 0


def cmd_schema(args) -> int:
    from backend.variant import Variant

    schema = Variant.schema()
    if args.json:
        print(json.dumps(jsonable(schema)))
        return 0
    print("Variant keys: " + ", ".join(f"{k} (default {v!r})" for k, v in schema["keys"].items()))
    for section, entry in schema["sections"].items():
        print(f"\n{section}: {entry['title']}")
        for p in entry["params"]:
            bounds = "" if p.get("minimum") is None and p.get("maximum") is None else \
                f" [{p.get('minimum')}, {p.get('maximum')}]"
            choices = f" one of {', '.join(map(str, p['choices']))}" if p.get("choices") else ""
            print(f"  {p['name']} ({p['type']}, default {p['default']!r}{bounds}{choices}): {p.get('help', '')}")
    return 0


def cmd_bench(args) -> int:
    from backend.bench.common import print_rows
    from backend.bench.docs import write_fragments, write_page

    module = importlib.import_module(f"backend.bench.{args.bench}")
    check_bench_outputs(args)
    rows = module.run(args)
    fragments = write_fragments(args.bench, rows, " ".join(["python -m backend"] + sys.argv[1:]),
                                default_model=getattr(args, "model", None) or "shapes")
    page = write_page(args.bench)
    print_rows(rows, as_json=args.json)
    print(f"rows written to {', '.join(str(f) for f in fragments)}; page rebuilt: {page}", file=sys.stderr)
    return 0


def check_bench_outputs(args) -> None:
    """Every file a bench writes, checked before it measures anything: its fragment folder and page under docs/,
    and its own --html figure where it has one."""
    from backend.bench.docs import DOCS, FRAGMENTS
    from backend.paths import check_out_dir, check_out_file

    check_out_dir(FRAGMENTS / args.bench, "bench fragments")
    check_out_file(DOCS / f"bench-{args.bench}.md", "bench page")
    if getattr(args, "html", None):
        check_out_file(args.html, "--html", (".html", ".htm"))


def cmd_bench_docs(args) -> int:
    from backend.bench.docs import bench_pages, write_pages

    for page in write_pages(bench_pages()):
        print(f"rebuilt {page}")
    return 0


def _add_external(sub, name: str, module_name: str, help: str) -> None:
    module = importlib.import_module(module_name)  # an import error is a bug, not a missing feature
    p = sub.add_parser(name, help=help, description=module.__doc__)
    module.add_arguments(p)
    p.set_defaults(func=module.main)


def build_parser() -> argparse.ArgumentParser:
    prog = "speedlab" if Path(sys.argv[0]).name == "speedlab" else "python -m backend"  # the console script
    parser = Parser(prog=prog, description=__doc__)
    parser.add_argument("--allow-pickle", action="store_true", help="load local models whose weights are only "
                        "pickled (.bin), with torch weights_only=True (default: safetensors only)")
    sub = parser.add_subparsers(dest="command", required=True)

    variant_help = (f"Variant as JSON text or a JSON file path; method sections: {', '.join(registry.sections())} "
                    "(`python -m backend schema` lists every key)")
    p = sub.add_parser("generate", help="one image for a prompt and seed")
    p.add_argument("--variant", required=True, help=variant_help)
    p.add_argument("--prompt", required=True)
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--out", required=True, help="output image (.png/.jpg)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("evaluate", help="quality and cost of a variant on a Shapes prompt set")
    p.add_argument("--variant", required=True, help=variant_help)
    p.add_argument("--baseline", help="baseline Variant for psnr/ssim_vs_baseline and speedup")
    p.add_argument("--n", type=int, default=200, help="number of prompts (default 200)")
    p.add_argument("--set", default=DEFAULT_SET, choices=PROMPT_SETS,
                   help=f"Shapes prompt set (default {DEFAULT_SET}: two-object + compositional, with headroom)")
    p.add_argument("--seed", type=seed_arg, default=0, help="first seed; prompt i uses seed+i")
    p.add_argument("--repeats", type=int, default=3,
                   help="interleaved timing rounds of one image, after a warm-up (≥ 1; default 3)")
    p.add_argument("--prompts", help="a UTF-8 text file of your prompts, one a line (the first --n are used); "
                   "on a model without the Shapes judge, quality is psnr/ssim vs --baseline plus the scorers")
    p.add_argument("--scorers", help="comma list of scorers to require (psnr_vs_baseline, ssim_vs_baseline, "
                   "lpips_vs_baseline, clip_score, pickscore); each must have its weights local")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("schema", help="every Variant key and method parameter, with defaults and bounds")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_schema)

    clis = {ft.kind: (m, ft.cli) for m, ft in registry.finetunes().values() if ft.cli}
    p = sub.add_parser("finetune", help=f"fine-tune a student: {' | '.join(clis)}")
    fsub = p.add_subparsers(dest="method", required=True)
    for name, (method, module_name) in clis.items():
        _add_external(fsub, name, module_name, f"{name} fine-tuning (makes a {method.section!r} checkpoint)")

    for name, module_name in EXTERNAL.items():
        _add_external(sub, name, module_name, name)

    p = sub.add_parser("bench", help="side-by-side benchmarks; writes docs/bench/NAME/*.json and docs/bench-NAME.md")
    bsub = p.add_subparsers(dest="bench", required=True)
    bp = bsub.add_parser("docs", help="rebuild every docs/bench-NAME.md from its fragments (measures nothing)")
    bp.set_defaults(func=cmd_bench_docs)
    for name in BENCHES:
        module = importlib.import_module(f"backend.bench.{name}")
        bp = bsub.add_parser(name, help=(module.__doc__ or name).strip().splitlines()[0])
        module.add_arguments(bp)
        bp.add_argument("--json", action="store_true", help="JSON rows on stdout")
        bp.set_defaults(func=cmd_bench)
    return parser


def describe_error(exc: BaseException) -> str:
    """One line for a refused input or a failed read/write; an OSError names its path."""
    if isinstance(exc, OSError) and exc.filename is not None:
        what = exc.strerror or type(exc).__name__
        other = f" -> {exc.filename2}" if exc.filename2 else ""
        return one_line(f"{exc.filename}{other}: {what}")
    return one_line(str(exc) or type(exc).__name__)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(message)s", level=logging.WARNING)  # the library's warnings: one line each
    from backend.models import allow_pickle

    allow_pickle(args.allow_pickle)
    try:
        return args.func(args) or 0
    except (ValueError, OSError, SafetensorError) as exc:
        print(f"error: {describe_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
