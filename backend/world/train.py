"""Train the embedded shapes-sd model and its two evaluators on the Shapes world.

    python -m backend.world.train [--stage all|vae|decoder|latents|judge|reward|unet|export] [--work DIR]

Stages run in order and each is time-boxed (``--*-minutes``). Every stage saves its state to
``--work`` every two minutes and resumes from it when run again; a finished stage is skipped.
Loss curves are written as CSV next to the state; ``export`` writes the diffusers pipeline to
``assets/shapes-sd`` and the evaluators to ``assets/evaluators``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from backend.paths import ASSETS
from backend.world import architecture as arch
from backend.world.evaluators import Judge, RewardNet, cell_loss, exact_match, scene_targets
from backend.world.grounding import CrossAttentionRecorder, grounding_loss, object_masks
from backend.world.shapes import sample_batch, to_tensor_range

SAVE_EVERY_S = 120
N_LATENTS = 48_000


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Noise and blur, so the evaluators stay right on imperfect generated images."""
    n = x.shape[0]
    sigma = torch.rand(n, 1, 1, 1, generator=gen) * 0.15
    x = x + sigma * torch.randn(x.shape, generator=gen)
    blur = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    mix = (torch.rand(n, 1, 1, 1, generator=gen) < 0.3).float() * torch.rand(n, 1, 1, 1, generator=gen)
    return (x * (1 - mix) + blur * mix).clamp(-1, 1)


def timeboxed_train(
    name: str, work: Path, modules: dict[str, torch.nn.Module], params: list, lr: float, minutes: float,
    step_fn: Callable[[int, torch.Generator], torch.Tensor], ema: dict[str, torch.nn.Module] | None = None,
    ema_decay: float = 0.999, warmup: int = 100,
) -> None:
    """AdamW with warm-up and a cosine decay over the wall-clock budget; resumable; logs loss.csv."""
    stage_dir = work / name
    stage_dir.mkdir(parents=True, exist_ok=True)
    state_path, log_path = stage_dir / "state.pt", stage_dir / "loss.csv"
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    step, elapsed = 0, 0.0
    if state_path.exists():
        state = torch.load(state_path, weights_only=True)
        for key, mod in modules.items():
            mod.load_state_dict(state["modules"][key])
        for key, mod in (ema or {}).items():
            mod.load_state_dict(state["ema"][key])
        opt.load_state_dict(state["opt"])
        step, elapsed = state["step"], state["elapsed"]
        print(f"[{name}] resuming at step {step}, {elapsed / 60:.1f} of {minutes:.1f} minutes done")
    budget = minutes * 60
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()) + step)

    def save() -> None:
        state = {
            "modules": {k: m.state_dict() for k, m in modules.items()},
            "ema": {k: m.state_dict() for k, m in (ema or {}).items()},
            "opt": opt.state_dict(), "step": step, "elapsed": elapsed,
        }
        torch.save(state, stage_dir / "state.tmp")
        (stage_dir / "state.tmp").replace(state_path)

    bar = tqdm(total=int(budget), initial=int(elapsed), unit="s", desc=name)
    start, last_save, losses = time.time() - elapsed, time.time(), []
    with log_path.open("a") as log:
        while elapsed < budget:
            frac = elapsed / budget
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
            loss = step_fn(step, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            for key, target in (ema or {}).items():
                decay = min(ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    torch._foreach_lerp_(list(target.parameters()), list(modules[key].parameters()), 1 - decay)
            step += 1
            losses.append(loss.detach())  # read every 50 steps: no device sync per step
            if step % 50 == 0:
                mean = torch.stack(losses).float().mean().item()
                log.write(f"{step},{elapsed:.1f},{mean:.5f}\n")
                log.flush()
                bar.set_postfix(step=step, loss=f"{mean:.4f}")
                losses = []
            now = time.time()
            bar.update(int(now - start) - bar.n)
            elapsed = now - start
            if now - last_save > SAVE_EVERY_S:
                save()
                last_save = now
    bar.close()
    save()


def train_vae(work: Path, minutes: float) -> None:
    done = work / "vae" / "vae.safetensors"
    if done.exists():
        return
    vae = arch.build_vae()

    def step_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        images, _ = sample_batch(32, seed=1_000_000 + step)
        x = to_tensor_range(images)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        return (rec - x).abs().mean() + ((rec - x) ** 2).mean() + 1e-6 * post.kl().mean()

    timeboxed_train("vae", work, {"vae": vae}, list(vae.parameters()), 1e-3, minutes, step_fn, warmup=50)
    save_file(vae.state_dict(), done)


def train_decoder(work: Path, minutes: float, object_weight: float) -> None:
    """Fine-tune the VAE decoder with the encoder frozen, so the latents (and any U-Net trained on them) stay
    valid. Pixels that differ from the plain background weigh 1 + object_weight: the jointly trained VAE drew
    small crosses as diamonds although its latents tell them apart."""
    done = work / "decoder" / "vae.safetensors"
    if done.exists() or minutes == 0:
        return
    vae = _load_vae(work).train()
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)

    def step_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        images, _ = sample_batch(32, seed=9_000_000 + step)
        x = to_tensor_range(images)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=gen)
        err = vae.decode(z).sample - x
        weight = 1 + object_weight * ((x - x[:, :, :1, :1]).abs().sum(1, keepdim=True) > 0.1).float()
        return (weight * (err.abs() + err ** 2)).mean()

    timeboxed_train("decoder", work, {"vae": vae}, params, 5e-4, minutes, step_fn, warmup=50)
    save_file(vae.state_dict(), done)


def _load_vae(work: Path):
    """The stage's VAE (with the fine-tuned decoder when that stage ran), or the shipped one (continuing
    training in a fresh work folder)."""
    vae = arch.build_vae()
    paths = [work / "decoder" / "vae.safetensors", work / "vae" / "vae.safetensors",
             ASSETS / "shapes-sd" / "vae" / "diffusion_pytorch_model.safetensors"]
    vae.load_state_dict(load_file(next(path for path in paths if path.exists())))
    return vae.eval()


def vae_round_trip(vae, x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] encoded to the latent mode and decoded again, clamped to [-1, 1]."""
    return vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)


@torch.no_grad()
def vae_psnr_per_image(vae, n: int = 512) -> np.ndarray:
    """PSNR (dB) of each of n held-out renders after a VAE round trip."""
    images, _ = sample_batch(n, seed=777_777, split="any")
    x = to_tensor_range(images)
    rec = torch.cat([vae_round_trip(vae, b) for b in x.split(128)])
    mse = ((rec - x) / 2).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1 / mse)).double().numpy()


def vae_psnr(vae, n: int = 512) -> float:
    return float(vae_psnr_per_image(vae, n).mean())


@torch.no_grad()
def encode_latents(work: Path, n: int = N_LATENTS) -> None:
    out = work / "latents.safetensors"
    if out.exists():
        return
    vae = _load_vae(work)
    latents, captions = [], []
    for i in tqdm(range(n // 256), desc="latents"):
        images, scenes = sample_batch(256, seed=2_000_000 + i)
        latents.append(vae.encode(to_tensor_range(images)).latent_dist.mode())
        captions += [s.caption for s in scenes]
    lat = torch.cat(latents).contiguous()
    tok = arch.build_tokenizer()
    ids = tok(captions, padding="max_length", max_length=arch.MAX_TOKENS, truncation=True,
              return_tensors="pt").input_ids
    save_file({"latents": lat, "ids": ids, "std": lat.std().reshape(1)}, out)


def train_evaluator(work: Path, name: str, minutes: float) -> None:
    done = work / name / f"{name}.safetensors"
    if done.exists():
        return
    torch.manual_seed(1 if name == "judge" else 2)
    net = Judge() if name == "judge" else RewardNet()
    offset = 3_000_000 if name == "judge" else 4_000_000

    def step_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        images, scenes = sample_batch(128, seed=offset + step, split="any")
        return cell_loss(net(_augment(to_tensor_range(images), gen)), scene_targets(scenes))

    timeboxed_train(name, work, {"net": net}, list(net.parameters()), 2e-3, minutes, step_fn, warmup=50)
    save_file(net.state_dict(), done)


@torch.no_grad()
def evaluator_hits(net: torch.nn.Module, n: int = 2000) -> np.ndarray:
    """1.0 for each of n held-out renders whose every cell the evaluator reads right, else 0.0."""
    images, scenes = sample_batch(n, seed=888_888, split="any")
    x, labels = to_tensor_range(images), scene_targets(scenes)
    hits = torch.cat([exact_match(net(xb), {k: v[i:i + 250] for k, v in labels.items()})
                      for i, xb in zip(range(0, n, 250), x.split(250))])
    return hits.double().numpy()


def evaluator_accuracy(net: torch.nn.Module, n: int = 2000) -> float:
    return float(evaluator_hits(net, n).mean())


def _init_from(unet, text, source: Path) -> None:
    """Start from earlier weights (a stage's state.pt, or an exported shapes-sd folder); modules they lack
    start as a no-op (zero output gain)."""
    if source.is_dir():
        modules = {"unet": load_file(source / "unet" / "diffusion_pytorch_model.safetensors"),
                   "text": load_file(source / "text_encoder" / "model.safetensors")}
    else:
        modules = torch.load(source, weights_only=True)["modules"]
    missing = unet.load_state_dict(modules["unet"], strict=False).missing_keys
    text.load_state_dict(modules["text"])
    if any(k.startswith("add_embedding.") for k in missing):
        torch.nn.init.zeros_(unet.add_embedding.norm2.weight)
    print(f"initialised from {source}; new parameters: {len(missing)}")


def train_unet(work: Path, minutes: float, init: Path | None = None, grounding: float = 0.0,
               two_object_frac: float = 0.5, lr: float = 1e-3) -> None:
    """Denoising loss (+ ``grounding`` × the cross-attention grounding loss); two-object scenes make up
    ``two_object_frac`` of every batch."""
    done = work / "unet" / "unet.safetensors"
    if done.exists():
        return
    data = load_file(work / "latents.safetensors")
    scale = float(1.0 / data["std"])
    latents, ids = data["latents"] * scale, data["ids"]
    empty = arch.build_tokenizer()([""], padding="max_length", max_length=arch.MAX_TOKENS,
                                   return_tensors="pt").input_ids
    torch.manual_seed(0)
    unet, text = arch.build_unet(), arch.build_text_encoder()
    if init is not None and not (work / "unet" / "state.pt").exists():
        _init_from(unet, text, init)
    ema = {"unet": copy.deepcopy(unet), "text": copy.deepcopy(text)}
    sched = arch.build_scheduler()
    masks, word_object = object_masks(arch.build_tokenizer().batch_decode(ids, skip_special_tokens=True))
    two = (word_object.max(1).values == 1).nonzero().squeeze(1)
    one = (word_object.max(1).values == 0).nonzero().squeeze(1)
    maps = CrossAttentionRecorder.install(unet) if grounding > 0 else []

    def step_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        n_two = int((torch.rand(64, generator=gen) < two_object_frac).sum())
        idx = torch.cat([two[torch.randint(0, len(two), (n_two,), generator=gen)],
                         one[torch.randint(0, len(one), (64 - n_two,), generator=gen)]])
        x0, tok, words = latents[idx], ids[idx].clone(), word_object[idx].clone()
        drop = torch.rand(64, generator=gen) < 0.1
        tok[drop], words[drop] = empty, -1
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (64,), generator=gen)
        maps.clear()
        pred = unet(sched.add_noise(x0, noise, t), t, text(tok)[0]).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        return loss + grounding * grounding_loss(maps, masks[idx], words) if grounding > 0 else loss

    params = list(unet.parameters()) + list(text.parameters())
    timeboxed_train("unet", work, {"unet": unet, "text": text}, params, lr, minutes, step_fn, ema=ema, warmup=200,
                    ema_decay=0.995 if init is not None else 0.999)
    save_file(ema["text"].state_dict(), work / "unet" / "text.safetensors")
    save_file(ema["unet"].state_dict(), done)


def export(work: Path, out: Path, guidance: float = 5.0) -> dict:
    """Write assets/shapes-sd (stock StableDiffusionPipeline layout) and assets/evaluators."""
    from diffusers import StableDiffusionPipeline

    data = load_file(work / "latents.safetensors")
    vae = _load_vae(work)
    vae.register_to_config(scaling_factor=float(1.0 / data["std"]))
    unet, text = arch.build_unet(), arch.build_text_encoder()
    if (work / "unet" / "unet.safetensors").exists():
        unet.load_state_dict(load_file(work / "unet" / "unet.safetensors"))
        text.load_state_dict(load_file(work / "unet" / "text.safetensors"))
    else:  # an interim export from the running stage's last saved EMA weights
        ema = torch.load(work / "unet" / "state.pt", weights_only=True)["ema"]
        unet.load_state_dict(ema["unet"])
        text.load_state_dict(ema["text"])
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=arch.build_tokenizer(), unet=unet, scheduler=arch.build_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out / "shapes-sd", safe_serialization=True)
    defaults = {"steps": 50, "guidance": guidance, "height": 64, "width": 64}
    (out / "shapes-sd" / "speedlab.json").write_text(json.dumps(defaults, indent=2) + "\n")
    (out / "evaluators").mkdir(parents=True, exist_ok=True)
    report = {"vae_psnr_db": vae_psnr(vae)}
    for name, cls in (("judge", Judge), ("reward", RewardNet)):
        net = cls()
        trained = work / name / f"{name}.safetensors"
        net.load_state_dict(load_file(trained if trained.exists() else ASSETS / "evaluators" / f"{name}.safetensors"))
        save_file(net.state_dict(), out / "evaluators" / f"{name}.safetensors")
        report[f"{name}_exact_match"] = evaluator_accuracy(net.eval())
    for stage in ("vae", "decoder", "judge", "reward", "unet"):
        if not (work / stage / "state.pt").exists():
            continue  # a stage that ran in an earlier work folder
        state = torch.load(work / stage / "state.pt", weights_only=True)
        report[f"{stage}_steps"], report[f"{stage}_minutes"] = state["step"], round(state["elapsed"] / 60, 1)
    (out / "shapes-sd" / "training.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", default="all",
                   choices=["all", "vae", "decoder", "latents", "judge", "reward", "unet", "export"])
    p.add_argument("--work", type=Path, default=Path(".cache/shapes-train"))
    p.add_argument("--out", type=Path, default=ASSETS)
    p.add_argument("--vae-minutes", type=float, default=9.0)
    p.add_argument("--decoder-minutes", type=float, default=20.0,
                   help="decoder fine-tune with the encoder frozen (0 = skip the stage)")
    p.add_argument("--object-weight", type=float, default=4.0,
                   help="extra loss weight of object pixels in the decoder stage")
    p.add_argument("--eval-minutes", type=float, default=3.0, help="for each of the judge and the reward model")
    p.add_argument("--unet-minutes", type=float, default=60.0)
    p.add_argument("--unet-init", type=Path, default=None,
                   help="start the U-Net from an earlier run's state.pt or an exported shapes-sd folder "
                   "(new modules start as a no-op)")
    p.add_argument("--grounding", type=float, default=0.0,
                   help="weight of the cross-attention grounding loss (backend/world/grounding.py); 0 = off")
    p.add_argument("--unet-lr", type=float, default=1e-3, help="peak lr of the U-Net stage (cosine to 1/10)")
    p.add_argument("--two-object-frac", type=float, default=0.5, help="share of two-object scenes per U-Net batch")
    p.add_argument("--n-latents", type=int, default=N_LATENTS, help="training images encoded for the U-Net")
    p.add_argument("--guidance", type=float, default=5.0, help="default guidance written to speedlab.json")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if not 0 <= args.two_object_frac <= 1:
        p.error(f"--two-object-frac {args.two_object_frac} is not allowed; allowed: 0 to 1")
    if args.object_weight < 0 or args.decoder_minutes < 0:
        p.error(f"--object-weight {args.object_weight} / --decoder-minutes {args.decoder_minutes}: must be ≥ 0")
    if args.grounding < 0 or args.unet_lr <= 0:
        p.error(f"--grounding {args.grounding} / --unet-lr {args.unet_lr}: the weight must be ≥ 0 and the lr > 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    stages = {
        "vae": lambda: train_vae(args.work, args.vae_minutes),
        "decoder": lambda: train_decoder(args.work, args.decoder_minutes, args.object_weight),
        "latents": lambda: encode_latents(args.work, args.n_latents),
        "judge": lambda: train_evaluator(args.work, "judge", args.eval_minutes),
        "reward": lambda: train_evaluator(args.work, "reward", args.eval_minutes),
        "unet": lambda: train_unet(args.work, args.unet_minutes, args.unet_init, args.grounding,
                                   args.two_object_frac, args.unet_lr),
        "export": lambda: print(json.dumps(export(args.work, args.out, args.guidance), indent=2)),
    }
    for name, run in stages.items():
        if args.stage in ("all", name):
            run()


if __name__ == "__main__":
    main()
