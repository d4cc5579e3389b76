"""Training latents for distillation: the Shapes world, a folder of captioned images, or the teacher's own samples."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline

from backend.methods.conditioning import TextCond, encode, predict
from backend.methods.consistency.students import students_for
from backend.models import denoiser

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Scene mixes of ``shapes:MIX``: train = one or two objects, never a held-out (shape, colour) pair (the teacher's
# own training distribution); two = two objects, train split; hard = the `hard` evaluation mix: half two-object
# train-split scenes, half "compositional" scenes (one or two objects, one with a held-out pair), drawn from other
# seeds than the evaluation sets.
SHAPES_MIXES = ("train", "two", "hard")


def pixel_size(pipe: DiffusionPipeline) -> int:
    """The side of the training images: the student family's latent size in pixels."""
    return int(students_for(pipe).latent_hw(pipe)[0]) * int(pipe.vae_scale_factor)


@torch.no_grad()
def encode_images(pipe: DiffusionPipeline, images_pm1: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Images in [-1, 1] (N×3×H×W, resized to the model's size) → scaled VAE latents."""
    size = pixel_size(pipe)
    if images_pm1.shape[-1] != size or images_pm1.shape[-2] != size:
        images_pm1 = torch.nn.functional.interpolate(images_pm1, size=(size, size), mode="bilinear",
                                                     antialias=True, align_corners=False)
    vae = pipe.vae
    dist = vae.encode(images_pm1.to(vae.device, vae.dtype)).latent_dist
    noise = torch.randn(dist.mean.shape, generator=gen).to(dist.mean)
    return (dist.mean + dist.std * noise - (vae.config.get("shift_factor") or 0.0)) * vae.config.scaling_factor


class ShapesData:
    """Unlimited captioned renders of the Shapes world, encoded with the pipeline's VAE.

    With ``pool > 0`` encoded latents are kept in a pool of that size: it fills with fresh renders first, then
    one eighth of each batch is fresh (replacing random entries), so the VAE encoder costs little per step.
    """

    name = "shapes"

    def __init__(self, pipe: DiffusionPipeline, seed: int = 0, pool: int = 0, mix: str = "train"):
        if mix not in SHAPES_MIXES:
            raise ValueError(f"data: shapes:{mix} is not a Shapes mix; allowed: "
                             f"{', '.join(f'shapes:{m}' for m in SHAPES_MIXES)}")
        self.pipe, self.seed, self.pool_size, self.mix = pipe, seed, pool, mix
        self.lat: torch.Tensor | None = None
        self.caps: list[str] = []
        self.describe = "Shapes world renders with their captions" + ("" if mix == "train" else f" ({mix} mix)")

    def _fresh(self, n: int, step: int, gen: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        from backend.world.shapes import random_scene, render, sample_batch, to_tensor_range

        seed = 5_000_000 + 10_007 * self.seed + step
        if self.mix == "train":
            images, scenes = sample_batch(n, seed=seed)
        else:
            rng = random.Random(seed)
            held = self.mix == "hard"
            scenes = [random_scene(rng, None, "compositional") if held and i % 2 else random_scene(rng, 2, "train")
                      for i in range(n)]
            images = np.stack([render(sc, rng) for sc in scenes])
        return encode_images(self.pipe, to_tensor_range(images), gen), [s.caption for s in scenes]

    def batch(self, n: int, step: int, gen: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        if self.pool_size <= 0:
            return self._fresh(n, step, gen)
        have = 0 if self.lat is None else len(self.lat)
        fresh_n = min(n, self.pool_size - have) if have < self.pool_size else max(1, n // 8)
        lat, caps = self._fresh(fresh_n, step, gen)
        if have < self.pool_size:
            self.lat = lat if self.lat is None else torch.cat([self.lat, lat])
            self.caps += caps
        else:
            slots = torch.randint(0, have, (fresh_n,), generator=gen)
            self.lat[slots.to(self.lat.device)] = lat
            for i, s in enumerate(slots.tolist()):
                self.caps[s] = caps[i]
        idx = torch.randint(0, len(self.lat), (n,), generator=gen)
        return self.lat[idx.to(self.lat.device)], [self.caps[i] for i in idx.tolist()]


class FolderData:
    """A folder of images, each with a caption in a .txt file of the same stem."""

    name = "folder"

    def __init__(self, pipe: DiffusionPipeline, folder: str | Path, seed: int = 0):
        self.pipe, self.folder = pipe, Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"data: {str(folder)!r} is not a folder; allowed: auto, shapes[:{'|'.join(SHAPES_MIXES)}]"
                             ", teacher[:PROMPTS.txt], or a folder of images with .txt captions")
        self.items = [(p, p.with_suffix(".txt")) for p in sorted(self.folder.iterdir())
                      if p.suffix.lower() in IMAGE_EXTS and p.with_suffix(".txt").is_file()]
        if not self.items:
            raise ValueError(f"data: folder {str(folder)!r} has no images with a .txt caption of the same name")
        self.seed = seed
        self.describe = f"{len(self.items)} captioned images in {self.folder}"

    def batch(self, n: int, step: int, gen: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        from PIL import Image, ImageOps

        rng = random.Random(1_000_003 * self.seed + step)
        picked = [self.items[rng.randrange(len(self.items))] for _ in range(n)]
        size = pixel_size(self.pipe)
        imgs, caps = [], []
        for img_path, txt_path in picked:
            with Image.open(img_path) as im:
                im = ImageOps.fit(im.convert("RGB"), (size, size), Image.Resampling.BICUBIC)
                imgs.append(np.asarray(im, dtype=np.float32) / 127.5 - 1.0)
            caps.append(txt_path.read_text().strip())
        x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)
        return encode_images(self.pipe, x, gen), caps


class TeacherData:
    """Data-free: latents sampled from the teacher itself (DDIM with CFG), refreshed every ``reuse`` steps."""

    name = "teacher"
    describe = "teacher samples"

    def __init__(self, pipe: DiffusionPipeline, prompts: list[str], guidance: float, steps: int = 20, reuse: int = 8,
                 seed: int = 0):
        self.pipe, self.prompts, self.guidance, self.steps, self.reuse = pipe, prompts, guidance, steps, reuse
        self.seed, self.cache = seed, None

    @torch.no_grad()
    def batch(self, n: int, step: int, gen: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        key = step // self.reuse
        if self.cache is None or self.cache[0] != key or len(self.cache[2]) != n:
            rng = random.Random(10_007 * self.seed + key)
            caps = [rng.choice(self.prompts) for _ in range(n)]
            sched = students_for(self.pipe).teacher_scheduler(self.pipe)
            net = denoiser(self.pipe)
            size = pixel_size(self.pipe) // self.pipe.vae_scale_factor
            g = torch.Generator().manual_seed(10_007 * self.seed + key)
            lat = torch.randn((n, net.config.in_channels, size, size), generator=g)
            lat = lat.to(next(net.parameters()).device, net.dtype)
            cond, uncond = encode(self.pipe, caps, (size, size))
            both = TextCond.cat([cond, uncond])
            sched.set_timesteps(self.steps)
            for t in sched.timesteps:
                out = predict(net, torch.cat([lat, lat]), t.expand(2 * n), both)
                c, u = out.chunk(2)
                lat = sched.step(u + self.guidance * (c - u), t, lat).prev_sample
            self.cache = (key, lat, caps)
        return self.cache[1], list(self.cache[2])


def shapes_prompts(n: int = 2000, seed: int = 0) -> list[str]:
    from backend.world.shapes import random_scene

    rng = random.Random(seed)
    return [random_scene(rng).caption for _ in range(n)]


def make_data(pipe: DiffusionPipeline, spec: str, guidance: float, seed: int = 0, pool: int = 0):
    """``auto`` (Shapes renders for a Shapes-world model; otherwise teacher samples of the built-in general
    captions), ``shapes`` or ``shapes:MIX`` (MIX in SHAPES_MIXES; ``shapes`` = ``shapes:train``), ``teacher``
    (Shapes captions for a Shapes model, the general captions otherwise), ``teacher:PROMPTS.txt`` or a folder
    of captioned images. The result's ``describe`` says which."""
    from backend.captions import CAPTIONS_FILE, general_captions, read_prompts
    from backend.models import has_shapes_judge

    shapes_model = has_shapes_judge(pipe)
    if spec == "auto":
        spec = "shapes" if shapes_model else "teacher"
    if spec == "shapes" or spec.startswith("shapes:"):
        return ShapesData(pipe, seed, pool, spec.split(":", 1)[1] if ":" in spec else "train")
    if spec == "teacher" or spec.startswith("teacher:"):
        if spec.startswith("teacher:"):
            path = spec.split(":", 1)[1]
            prompts, source = read_prompts(path), path
        elif shapes_model:
            prompts, source = shapes_prompts(seed=seed), "Shapes captions"
        else:
            prompts, source = list(general_captions()), f"built-in general captions ({CAPTIONS_FILE.name})"
        data = TeacherData(pipe, prompts, guidance, seed=seed)
        data.describe = f"teacher samples of {len(prompts)} prompts: {source}"
        return data
    return FolderData(pipe, spec, seed)
