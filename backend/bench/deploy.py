"""Real low-bit deployment: fp32 vs simulated W8A8 vs real int8-kernel W8A8 (and W4A8) U-Nets, side by side.

For each model (the embedded shapes-sd at its 50 DDIM steps, and sd15-arch — SD 1.5's architecture with
random weights — at 256×256): one PTQ calibration per bit-width is saved as a packed checkpoint, then
loaded twice, simulated (fake quantization) and on real oneDNN int8 kernels, in this one process.
Rows (timing: backend.metrics.cost.timed_rounds, configurations interleaved round by round, medians with
95% intervals): `unet_ms` (one U-Net forward at CFG batch 2, --repeats rounds), `unet_speedup` /
`unet_speedup_ci` (the U-Net's, vs fp32 per round; `unet_speedup_vs_simulated`), `latency_s` / `speedup` /
`speedup_ci` (one image end to end — text encoder, all denoising steps with CFG, VAE — vs fp32, --e2e-repeats
rounds), `timing_noisy`, `peak_mem_mb` (memory growth while generating the first batch of images, the PSNR
prompts), `load_peak_mb` (peak RSS growth while building the variant from its packed
checkpoint; fp32: the U-Net's fp32 bytes), `weights_mb` (resident U-Net weights: fp32 tensors plus one
byte per int8 weight), `weights_vs_fp32`,
`disk_mb` (the packed checkpoint; fp32: the U-Net's fp32 bytes), `psnr_real_vs_simulated` (same
prompts and seeds) and `psnr_vs_fp32`, which kernels ran, and `isa`: the CPU instruction set oneDNN's int8
kernels used (with the ONEDNN_MAX_CPU_ISA cap when one lowered it). Without VNNI/AMX (AVX2, AVX-512 without
VNNI) the real rows run reduce_range (7-bit activations, see backend/methods/quant/isa.py), so their
`psnr_real_vs_simulated` includes that coarser rounding.
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys
import tempfile
from pathlib import Path

import torch

from backend.bench.common import check_positive, comma_choices
from backend.metadata import pipeline_info
from backend.models import model_defaults

MODELS = ("shapes", "sd15-arch")
BITS = {"W8A8": (8, 8), "W4A8": (4, 8)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--models", default=",".join(MODELS), help=f"subset of {', '.join(MODELS)} (default both), "
                        "or local model folders / single files")
    parser.add_argument("--bits", default="W8A8", help=f"comma list of {', '.join(BITS)} (default W8A8; W4A8 runs "
                        "4-bit codes on the int8 kernels: smaller on disk, not faster)")
    parser.add_argument("--repeats", type=int, default=5, help="timed U-Net forwards per row (default 5)")
    parser.add_argument("--e2e-repeats", type=int, default=2, help="timed end-to-end images per row (default 2)")
    parser.add_argument("--n", type=int, default=8, help="shapes-sd prompts for the PSNR columns (default 8)")
    parser.add_argument("--sd15-size", type=int, default=256, help="sd15-arch height and width (default 256)")
    parser.add_argument("--sd15-steps", type=int, default=10, help="sd15-arch DDIM steps end to end (default 10)")
    parser.add_argument("--calib-steps", type=int, default=6, help="sd15-arch PTQ calibration trajectory steps")
    parser.add_argument("--seed", type=int, default=0)


def _measure(pipes: dict, variants: dict, prompts: list[str], seeds: list[int], args) -> dict[str, dict]:
    """U-Net forward and end-to-end times (interleaved), RSS growth and images of every pipeline."""
    from backend.metrics.cost import peak_memory_mb, timed_rounds
    from backend.sampling import generate

    ref = next(iter(pipes.values()))
    v0 = next(iter(variants.values()))
    defaults = model_defaults(ref)
    h, w = v0.height or defaults.get("height", 64), v0.width or defaults.get("width", 64)
    f = ref.vae_scale_factor
    x = torch.randn(2, ref.unet.config.in_channels, h // f, w // f, generator=torch.Generator().manual_seed(args.seed))
    ids = ref.tokenizer(prompts[:1] * 2, padding="max_length", max_length=ref.tokenizer.model_max_length,
                        return_tensors="pt").input_ids
    with torch.no_grad():
        text = ref.text_encoder(ids)[0]
    t = int(ref.scheduler.config.num_train_timesteps // 2)

    def forward(name: str) -> None:
        with torch.no_grad():
            pipes[name].unet(x, t, encoder_hidden_states=text)

    def image(name: str) -> None:
        generate(pipes[name], variants[name], prompts[:1], seeds[:1])

    def all_images(name: str, into: dict) -> None:
        into["images"] = generate(pipes[name], variants[name], prompts, seeds)

    unet_t = timed_rounds({n: (lambda n=n: forward(n)) for n in pipes}, repeats=args.repeats, baseline="fp32")
    out: dict[str, dict] = {n: {"unet": unet_t[n], "size": (h, w)} for n in pipes}
    for name in pipes:  # every prompt's image (for PSNR), also the end-to-end warm-up
        out[name]["peak_mem_mb"] = peak_memory_mb(lambda name=name: all_images(name, out[name]))
    e2e_t = timed_rounds({n: (lambda n=n: image(n)) for n in pipes}, repeats=args.e2e_repeats, warmup=0,
                         baseline="fp32")
    for name in pipes:
        out[name]["e2e"] = e2e_t[name]
    return out


def _build_measured(variant):
    """(pipeline, peak RSS growth in MiB while building it)."""
    from backend.metrics.cost import peak_memory_mb
    from backend.runs.build import build_pipeline

    gc.collect()
    out: list = []
    peak = peak_memory_mb(lambda: out.append(build_pipeline(variant)))
    return out[0], peak


def _rows_for_model(model: str, bits: list[str], args) -> list[dict]:
    from backend.methods.quant import QuantConfig, ptq
    from backend.methods.quant.checkpoint import checkpoint_size_mb, save_checkpoint
    from backend.methods.quant.isa import int8_support
    from backend.methods.quant.kernels import resident_weight_mb
    from backend.metrics.cost import model_size_mb
    from backend.metrics.quality import psnr_ssim
    from backend.models import load_pipeline
    from backend.runs.build import build_pipeline
    from backend.variant import Variant
    from backend.world.prompts import eval_prompts

    base = {"model": model, "scheduler": "ddim", "name": "fp32"}
    if model == "sd15-arch":
        base.update(height=args.sd15_size, width=args.sd15_size, steps=args.sd15_steps)
        prompts = ["a photograph of an astronaut riding a horse"]
    elif model == "shapes":
        prompts = eval_prompts("single", args.n)
    else:  # a local model: the built-in general captions
        from backend.captions import general_captions

        prompts = list(general_captions())[: args.n]
    seeds = [args.seed + i for i in range(len(prompts))]
    fp_variant = Variant.from_dict(base)
    fp_pipe = build_pipeline(fp_variant)
    fp_weights = resident_weight_mb(fp_pipe.unet)
    isa = int8_support().isa
    isa_name = f"{isa.name} (ONEDNN_MAX_CPU_ISA={isa.cap})" if isa.cap else isa.name
    calib = {"calib_prompts": 2, "calib_steps": args.calib_steps, "calib_samples": 16} if model != "shapes" else {}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="speedlab-deploy-") as work:
        for label in bits:  # one group per bit-width (fp32 timed in each), freed before the next
            w, a = BITS[label]
            print(f"deploy bench: {model} {label}: PTQ calibration, packed checkpoint", file=sys.stderr)
            pipe = load_pipeline(model)
            pipe.unet = copy.deepcopy(pipe.unet)
            ptq(pipe, QuantConfig.from_dict({"weight_bits": w, "act_bits": a, **calib}))
            ckpt = save_checkpoint(pipe.unet, Path(work) / label)
            del pipe
            pipes, variants = {"fp32": fp_pipe}, {"fp32": fp_variant}
            load_mb = {"fp32": model_size_mb(fp_pipe.unet)}  # what loading the fp32 U-Net takes
            for kernels in ("simulated", "real"):
                name = f"{kernels} {label}"
                variants[name] = Variant.from_dict({**base, "name": name,
                                                    "quant": {"checkpoint": str(ckpt), "kernels": kernels}})
                pipes[name], load_mb[name] = _build_measured(variants[name])
            print(f"deploy bench: {model} {label}: timing fp32 / simulated / real", file=sys.stderr)
            m = _measure(pipes, variants, prompts, seeds, args)
            for name in pipes:
                if name == "fp32" and rows:
                    continue
                unet, e2e = m[name]["unet"], m[name]["e2e"]
                row = {"model": model, "config": name, "size": m[name]["size"][0],
                       "steps": variants[name].steps or model_defaults(pipes[name]).get("steps"),
                       "unet_ms": 1000 * unet["latency_s"], "unet_speedup": unet["speedup"],
                       "unet_speedup_ci": unet["speedup_ci"], "latency_s": e2e["latency_s"],
                       "latency_ci": e2e["latency_ci"], "speedup": e2e["speedup"], "speedup_ci": e2e["speedup_ci"],
                       "timing_noisy": unet["timing_noisy"] or e2e["timing_noisy"],
                       "peak_mem_mb": m[name]["peak_mem_mb"],
                       "load_peak_mb": load_mb[name],
                       "weights_mb": resident_weight_mb(pipes[name].unet),
                       "disk_mb": model_size_mb(fp_pipe.unet) if name == "fp32" else checkpoint_size_mb(ckpt),
                       "kernels": pipeline_info(pipes[name]).kernels or "fp32", "isa": isa_name}
                row["weights_vs_fp32"] = row["weights_mb"] / fp_weights
                if name != "fp32":
                    row["psnr_vs_fp32"] = psnr_ssim(m[name]["images"], m["fp32"]["images"])[0]
                if name.startswith("real "):
                    sim = f"simulated {label}"
                    row["psnr_real_vs_simulated"] = psnr_ssim(m[name]["images"], m[sim]["images"])[0]
                    row["unet_speedup_vs_simulated"] = m[sim]["unet"]["latency_s"] / unet["latency_s"]
                rows.append(row)
    return rows


def run(args) -> list[dict]:
    local = [m.strip() for m in str(args.models).split(",") if m.strip() and Path(m.strip()).exists()]
    models = comma_choices(args.models, MODELS + tuple(local), "--models")
    bits = comma_choices(args.bits, BITS, "--bits")
    check_positive(args, ("repeats", "e2e_repeats", "n", "sd15_size", "sd15_steps", "calib_steps"))
    if args.sd15_size % 64:
        raise ValueError(f"--sd15-size {args.sd15_size} is not allowed; allowed: a multiple of 64")
    from backend.methods.quant.kernels import unavailable_reason

    reason = unavailable_reason("cpu")
    if reason:
        raise ValueError(f"bench deploy needs real int8 kernels on this CPU, but {reason}")
    rows = []
    for model in models:
        rows += _rows_for_model(model, bits, args)
    return rows
