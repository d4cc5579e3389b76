"""Train shapes-dit: a small PixArt-style transformer on shapes-sd's frozen text encoder and VAE.

    python -m backend.world.train_dit --work DIR [--config a|b|c|tiny] [--minutes 6.5] [--device cuda]
                                      [--teacher assets/shapes-sd]   # distil shapes-sd's U-Net
    python -m backend.world.train_dit --ship DIR --runs WORK [WORK ...]   # the best run's files, for the trip home
    python -m backend.world.train_dit --install DIR                      # DIR (shipped) -> assets/shapes-dit
    python -m backend.world.train_dit --evaluate FOLDER [--eval-n 100]   # hard-set accuracy of an exported folder

One shot, built for one GPU: scenes of the training split are rendered in worker processes, encoded by
the frozen VAE on the device and kept in its memory with the caption embeddings; the transformer is
then trained for ``--minutes`` of wall clock (AdamW, warm-up, cosine, EMA, 10% caption dropout for CFG,
bf16 autocast on CUDA, optionally the cross-attention grounding loss of shapes-sd). With ``--teacher`` the
regression target is (partly) a frozen U-Net's epsilon at the same noisy latent, timestep and prompt instead of
the sampled noise: the same minimiser, without the noise's variance. The EMA weights are
exported as a stock ``PixArtSigmaPipeline`` folder (``WORK/shapes-dit``) and scored on the ``hard`` set
by the judge at the model's default steps; ``WORK/loss.csv`` and ``WORK/shapes-dit.json`` keep the log.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backend.world import architecture as arch
from backend.world.grounding import CrossAttentionRecorder, grounding_loss, object_masks
from backend.world.prompts import eval_prompts
from backend.world.shapes import sample_batch, to_tensor_range
from backend.world.train import ASSETS, timeboxed_train

SHAPES_SD = ASSETS / "shapes-sd"
PRESETS = {  # width (heads × 32), blocks, peak lr; a and b ≤ 14 MiB of fp32 weights
    "a": {"width": 128, "heads": 4, "layers": 12, "lr": 1e-3},  # deeper: caching the middle blocks saves more
    "b": {"width": 160, "heads": 5, "layers": 8, "lr": 5e-4},  # wider, gentler
    "c": {"width": 128, "heads": 4, "layers": 8, "lr": 1e-3},  # what a 2-core CPU trains in a session (with --teacher)
    "tiny": {"width": 32, "heads": 2, "layers": 2, "lr": 1e-3},  # tests
}
CHUNK = 500  # scenes per rendering job
SEED0 = 6_000_000  # render seeds of this trainer (shapes-sd used 1M–4M and 9M)
DEFAULTS = {"steps": 50, "height": 64, "width": 64}
SHIPPED = ("transformer/config.json", "transformer/diffusion_pytorch_model.safetensors", "loss.csv", "shapes-dit.json")


def build_transformer(config: str):
    from diffusers import PixArtTransformer2DModel

    p = PRESETS[config]
    return PixArtTransformer2DModel(
        num_attention_heads=p["heads"], attention_head_dim=p["width"] // p["heads"], in_channels=4, out_channels=4,
        num_layers=p["layers"], cross_attention_dim=p["width"], sample_size=16, patch_size=2,
        caption_channels=arch.TEXT_DIM, norm_type="ada_norm_single", use_additional_conditions=False,
    )


def call_kwargs(tokenizer_max: int) -> dict:
    """What a stock PixArt pipeline call needs for this model: CLIP's short sequence instead of T5's 300,
    no T5 caption cleaning, no aspect-ratio binning (defined only for sample sizes 32–256)."""
    return {"max_sequence_length": tokenizer_max, "clean_caption": False, "use_resolution_binning": False}


def _render(job: tuple[int, int, int]) -> tuple[np.ndarray, list[str]]:
    seed, n, n_objects = job
    images, scenes = sample_batch(n, seed, "train", n_objects)
    return images, [s.caption for s in scenes]


def render_pool(n: int, two_object_frac: float, workers: int):
    """n training-split scenes (a two_object_frac share with two objects), rendered in worker processes."""
    n_two = round(n * two_object_frac)
    jobs = [(SEED0 + i, min(CHUNK, n_two - start), 2) for i, start in enumerate(range(0, n_two, CHUNK))]
    jobs += [(SEED0 + len(jobs) + i, min(CHUNK, n - n_two - start), 1)
             for i, start in enumerate(range(0, n - n_two, CHUNK))]
    if workers > 0:
        with multiprocessing.get_context("fork").Pool(workers) as pool:  # before any CUDA use
            parts = pool.map(_render, jobs)
    else:
        parts = [_render(job) for job in jobs]
    return np.concatenate([p[0] for p in parts]), [c for p in parts for c in p[1]]


@torch.no_grad()
def encode_pool(images: np.ndarray, captions: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """Latents (scaled like the pipeline's), the embeddings and padding masks of the unique captions (the last
    row is the empty prompt, the pipeline's negative), each scene's caption index, and grounding targets.
    ``unmasked`` are the embeddings as Stable Diffusion's pipeline computes them (no padding mask), for a
    U-Net teacher."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, PreTrainedTokenizerFast

    vae = AutoencoderKL.from_pretrained(SHAPES_SD / "vae").to(device).eval()
    text = CLIPTextModel.from_pretrained(SHAPES_SD / "text_encoder").to(device).eval()
    tok = PreTrainedTokenizerFast.from_pretrained(SHAPES_SD / "tokenizer")
    lat = torch.cat([vae.encode(to_tensor_range(images[i:i + 2048]).to(device)).latent_dist.mode()
                     for i in range(0, len(images), 2048)]) * vae.config.scaling_factor
    unique = sorted(set(captions))
    index = {c: i for i, c in enumerate(unique)}
    enc = tok([*unique, ""], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").to(device)
    embeds = text(enc.input_ids, attention_mask=enc.attention_mask)[0]  # as PixArt's encode_prompt computes them
    unmasked = text(enc.input_ids)[0]
    masks, words = object_masks(unique)
    return {
        "latents": lat, "caption": torch.tensor([index[c] for c in captions], device=device),
        "embeds": embeds, "mask": enc.attention_mask, "unmasked": unmasked,
        "cells": torch.cat([masks, masks.new_zeros(1, *masks.shape[1:])]).to(device),
        "words": torch.cat([words, words.new_full((1, words.shape[1]), -1)]).to(device),
    }


def train(work: Path, config: str, minutes: float, n_scenes: int, batch: int, lr: float, grounding: float,
          two_object_frac: float, workers: int, device: torch.device, init: Path | None = None,
          teacher: Path | None = None, teacher_weight: float = 1.0) -> tuple[dict, torch.nn.Module]:
    t0 = time.time()
    images, captions = render_pool(n_scenes, two_object_frac, workers)
    render_s = time.time() - t0
    data = encode_pool(images, captions, device)
    del images
    encode_s = time.time() - t0 - render_s
    print(f"data: {n_scenes} scenes rendered in {render_s:.0f} s, encoded in {encode_s:.0f} s; "
          f"{len(data['embeds']) - 1} distinct captions", flush=True)
    torch.manual_seed(0)
    model = (load_shipped(init) if init else build_transformer(config)).to(device).train()
    ema = copy.deepcopy(model).eval()
    sched = arch.build_scheduler()
    sched.alphas_cumprod = sched.alphas_cumprod.to(device)
    maps = CrossAttentionRecorder.install(model) if grounding > 0 else []
    empty = len(data["embeds"]) - 1
    unet = load_teacher(teacher, device) if teacher else None
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda")

    def step_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, len(data["latents"]), (batch,), device=device)
        cap = data["caption"][idx]
        cap = torch.where(torch.rand(batch, device=device) < 0.1, empty, cap)  # CFG: the empty prompt
        x0 = data["latents"][idx]
        noise = torch.randn_like(x0)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), device=device)
        xt = sched.add_noise(x0, noise, t)
        target = noise
        maps.clear()
        with autocast:
            if unet is not None:
                with torch.no_grad():
                    eps = unet(xt, t, encoder_hidden_states=data["unmasked"][cap]).sample.float()
                target = teacher_weight * eps + (1 - teacher_weight) * noise
            pred = model(xt, encoder_hidden_states=data["embeds"][cap],
                         encoder_attention_mask=data["mask"][cap], timestep=t,
                         added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
            loss = F.mse_loss(pred.float(), target)
            if grounding > 0:
                loss = loss + grounding * grounding_loss([m.float() for m in maps], data["cells"][cap],
                                                         data["words"][cap])
        return loss

    if not np.isfinite(step_fn(0, torch.Generator()).item()):
        raise RuntimeError("the first loss is not finite")
    timeboxed_train("dit", work, {"dit": model}, list(model.parameters()), lr, minutes, step_fn,
                    ema={"dit": ema}, ema_decay=0.999, warmup=500)
    state = torch.load(work / "dit" / "state.pt", weights_only=True)
    return {"steps": state["step"], "train_minutes": round(state["elapsed"] / 60, 2),
            "render_s": round(render_s, 1), "encode_s": round(encode_s, 1),
            "distinct_captions": len(data["embeds"]) - 1}, ema


def load_teacher(folder: Path, device: torch.device):
    """The frozen U-Net of a pipeline folder that shares shapes-dit's latents, text encoder and noise schedule."""
    from diffusers import UNet2DConditionModel

    if not (folder / "unet" / "config.json").exists():
        raise ValueError(f"--teacher {folder} holds no unet/config.json; allowed: a U-Net pipeline folder "
                         f"on shapes-sd's VAE and text encoder (e.g. {SHAPES_SD})")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").to(device).eval().requires_grad_(False)
    if unet.config.in_channels != 4 or unet.config.cross_attention_dim != arch.TEXT_DIM:
        raise ValueError(f"--teacher {folder}: its U-Net takes {unet.config.in_channels} latent channels and "
                         f"{unet.config.cross_attention_dim}-wide text; allowed: 4 and {arch.TEXT_DIM} (shapes-sd's)")
    return unet


def export(transformer, out: Path, guidance: float) -> None:
    """Write a stock PixArtSigmaPipeline folder (shapes-sd's text encoder, tokenizer and VAE) atomically."""
    from diffusers import AutoencoderKL, PixArtSigmaPipeline
    from transformers import CLIPTextModel, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(SHAPES_SD / "tokenizer")
    pipe = PixArtSigmaPipeline(
        tokenizer=tok, text_encoder=CLIPTextModel.from_pretrained(SHAPES_SD / "text_encoder"),
        vae=AutoencoderKL.from_pretrained(SHAPES_SD / "vae"), transformer=transformer.float().cpu(),
        scheduler=arch.build_scheduler(),
    )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    defaults = {**DEFAULTS, "guidance": guidance, "max_sequence_length": tok.model_max_length}
    (tmp / "speedlab.json").write_text(json.dumps(defaults, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)


@torch.no_grad()
def evaluate(folder: Path, n: int, device: torch.device, batch: int = 100) -> dict:
    """Judge metrics of the exported pipeline on n prompts of the hard set, seeds 0..n-1 (as `evaluate` draws
    them: one CPU generator per image) at the model's default steps and guidance."""
    from diffusers import PixArtSigmaPipeline

    from backend.metrics.quality import judge_metrics

    pipe = PixArtSigmaPipeline.from_pretrained(folder).to(device)
    pipe.set_progress_bar_config(disable=True)
    d = json.loads((folder / "speedlab.json").read_text())
    prompts = eval_prompts("hard", n)
    images = []
    for s in range(0, n, batch):
        gens = [torch.Generator("cpu").manual_seed(i) for i in range(s, min(n, s + batch))]
        latents = torch.stack([torch.randn((4, d["height"] // 4, d["width"] // 4), generator=g) for g in gens])
        out = pipe(prompts[s:s + batch], num_inference_steps=d["steps"], guidance_scale=d["guidance"],
                   height=d["height"], width=d["width"], latents=latents.to(device), output_type="np",
                   **call_kwargs(d["max_sequence_length"]))
        images.append(out.images)
    return judge_metrics(np.concatenate(images), prompts)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def ship(runs: list[Path], dest: Path) -> None:
    """Copy the most accurate finished run's files (SHIPPED) to dest, with every run's summary in runs.json."""
    done = {r: json.loads((r / "shapes-dit.json").read_text()) for r in runs if (r / "shapes-dit.json").exists()}
    if not done:
        raise ValueError(f"no finished run in {', '.join(map(str, runs))}; allowed: work folders with shapes-dit.json")
    best = max(done, key=lambda r: done[r].get("eval", {}).get("prompt_accuracy", -1.0))
    dest.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED:
        src = best / ("shapes-dit/" + name if name.startswith("transformer") else name)
        shutil.copyfile(src, dest / name.replace("/", "-"))
    summary = {str(r): {k: s.get(k) for k in ("settings", "eval", "steps")} for r, s in done.items()}
    _write_json(dest / "runs.json", summary)
    print(f"shipped {best} (hard accuracy {done[best].get('eval', {}).get('prompt_accuracy')}) to {dest}")


def load_shipped(shipped: Path):
    """The transformer of a --ship folder (its files flattened as transformer-*)."""
    import tempfile

    from diffusers import PixArtTransformer2DModel

    with tempfile.TemporaryDirectory() as tmp:
        for name in SHIPPED[:2]:
            shutil.copyfile(shipped / name.replace("/", "-"), Path(tmp) / name.split("/")[1])
        return PixArtTransformer2DModel.from_pretrained(tmp)


def install(shipped: Path, out: Path, docs: Path) -> None:
    """Rebuild the full pipeline folder from shipped transformer files; copy the log and settings to docs."""
    settings = json.loads((shipped / "shapes-dit.json").read_text())
    export(load_shipped(shipped), out, settings["settings"]["guidance"])
    docs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shipped / "loss.csv", docs / "dit-loss.csv")
    shutil.copyfile(shipped / "shapes-dit.json", docs / "shapes-dit.json")
    if (shipped / "runs.json").exists():
        shutil.copyfile(shipped / "runs.json", docs / "shapes-dit-runs.json")
    print(f"installed {out}; log and settings in {docs}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, help="work folder of a training run (created; reused state resumes)")
    p.add_argument("--config", default="a", choices=sorted(PRESETS))
    p.add_argument("--minutes", type=float, default=6.5, help="wall-clock training budget")
    p.add_argument("--n-scenes", type=int, default=200_000, help="training scenes rendered and encoded")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=None,
                   help="peak lr (warm-up 500 steps, cosine to 1/10); default: the preset's")
    p.add_argument("--grounding", type=float, default=0.01, help="cross-attention grounding loss weight; 0 = off")
    p.add_argument("--two-object-frac", type=float, default=0.65)
    p.add_argument("--guidance", type=float, default=5.0, help="default guidance written to speedlab.json")
    p.add_argument("--eval-n", type=int, default=100, help="hard-set prompts judged after training (0 = skip)")
    p.add_argument("--workers", type=int, default=7, help="rendering processes (0 = in this process)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ship", type=Path, help="copy the best of --runs to this folder (SHIPPED files + runs.json)")
    p.add_argument("--runs", type=Path, nargs="+", default=[])
    p.add_argument("--install", type=Path, help="a --ship folder: write assets/shapes-dit and docs/training")
    p.add_argument("--evaluate", type=Path, help="an exported folder: print its hard-set judge metrics (JSON)")
    p.add_argument("--init", type=Path, help="start from the transformer of a --ship folder (same --config)")
    p.add_argument("--teacher", type=Path, help="distil this U-Net pipeline's epsilon (e.g. assets/shapes-sd)")
    p.add_argument("--teacher-weight", type=float, default=1.0,
                   help="share of the teacher's epsilon in the target (the rest: the sampled noise)")
    args = p.parse_args(argv)
    try:
        if args.install:
            return install(args.install, ASSETS / "shapes-dit", ASSETS.parent / "docs" / "training")
        if args.ship:
            return ship(args.runs, args.ship)
        if args.evaluate:
            return print(json.dumps(evaluate(args.evaluate, args.eval_n, torch.device(args.device)), indent=2))
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    if args.work is None:
        p.error("--work is required to train (or give --ship / --install)")
    args.lr = PRESETS[args.config]["lr"] if args.lr is None else args.lr
    for flag, value, ok, allowed in (
        ("--two-object-frac", args.two_object_frac, 0 <= args.two_object_frac <= 1, "0 to 1"),
        ("--grounding", args.grounding, args.grounding >= 0, "≥ 0"), ("--lr", args.lr, args.lr > 0, "> 0"),
        ("--minutes", args.minutes, args.minutes > 0, "> 0"),
        ("--teacher-weight", args.teacher_weight, 0 <= args.teacher_weight <= 1, "0 to 1"),
        ("--eval-n", args.eval_n, 0 <= args.eval_n <= 500, "0 to 500"),
        ("--batch", args.batch, 1 <= args.batch <= args.n_scenes, f"1 to --n-scenes ({args.n_scenes})"),
    ):
        if not ok:
            p.error(f"{flag} {value} is not allowed; allowed: {allowed}")
    try:  # fail before the data and the training, not after them
        import diffusers  # noqa: F401

        if args.eval_n:
            import backend.metrics.quality  # noqa: F401  (scipy)
    except ImportError as e:
        p.error(f"{e}; install it (or pass --eval-n 0 to skip the built-in evaluation)")
    device = torch.device(args.device)
    args.work.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("ship", "runs", "install")}
    if args.init:
        prior = json.loads((args.init / "shapes-dit.json").read_text())
        settings["init"] = {k: prior.get(k) for k in ("settings", "steps", "train_minutes", "eval")}
    settings["preset"] = PRESETS[args.config]
    _write_json(args.work / "settings.json", settings)
    if args.init and not (args.init / "transformer-config.json").exists():
        p.error(f"--init {args.init} holds no transformer-config.json; allowed: a --ship folder")
    if args.teacher:
        try:
            load_teacher(args.teacher, torch.device("cpu"))
        except ValueError as e:
            p.error(str(e))
    report, ema = train(args.work, args.config, args.minutes, args.n_scenes, args.batch, args.lr, args.grounding,
                        args.two_object_frac, args.workers, device, args.init, args.teacher, args.teacher_weight)
    shutil.copyfile(args.work / "dit" / "loss.csv", args.work / "loss.csv")
    folder = args.work / "shapes-dit"
    export(ema, folder, args.guidance)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    report |= {"parameters": sum(q.numel() for q in ema.parameters()), "weights_bytes": weights.stat().st_size}
    _write_json(args.work / "shapes-dit.json", {"settings": settings, **report})  # kept if the evaluation fails
    if args.eval_n:
        t = time.time()
        report["eval"] = evaluate(folder, args.eval_n, device) | {"set": "hard", "n": args.eval_n,
                                                                   "seconds": round(time.time() - t, 1)}
        print(f"hard accuracy {report['eval']['prompt_accuracy']:.3f} (n={args.eval_n}, {args.config}, "
              f"{report['steps']} steps × {args.batch})", flush=True)
    _write_json(args.work / "shapes-dit.json", {"settings": settings, **report})


if __name__ == "__main__":
    main()
