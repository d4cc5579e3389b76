"""Training latents for distillation: the Shapes world, a folder of captioned images, or the teacher's own samples."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def pixel_size(pipe: DiffusionPipeline) -> int:
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


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
    return (dist.mean + dist.std * noise) * vae.config.scaling_factor


class ShapesData:
    """Unlimited captioned renders of the Shapes world, encoded with the pipeline's VAE.

    With ``pool > 0`` encoded latents are kept in a pool of that size: it fills with fresh renders first, then
    one eighth of each batch is fresh (replacing random entries), so the VAE encoder costs little per step.
    """

    name = "shapes"

    def __init__(self, pipe: DiffusionPipeline, seed: int = 0, pool: int = 0):
        self.pipe, self.seed, self.pool_size = pipe, seed, pool
        self.lat: torch.Tensor | None = None
        self.caps: list[str] = []

    def _fresh(self, n: int, step: int, gen: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        from backend.world.shapes import sample_batch, to_tensor_range

        images, scenes = sample_batch(n, seed=5_000_000 + 10_007 * self.seed + step)
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
            self.lat[slots] = lat
            for i, s in enumerate(slots.tolist()):
                self.caps[s] = caps[i]
        idx = torch.randint(0, len(self.lat), (n,), generator=gen)
        return self.lat[idx], [self.caps[i] for i in idx.tolist()]


class FolderData:
    """A folder of images, each with a caption in a .txt file of the same stem."""

    name = "folder"

    def __init__(self, pipe: DiffusionPipeline, folder: str | Path, seed: int = 0):
        self.pipe, self.folder = pipe, Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"data: {str(folder)!r} is not a folder; allowed: auto, shapes, teacher, or a folder "
                             "of images with .txt captions")
        self.items = [(p, p.with_suffix(".txt")) for p in sorted(self.folder.iterdir())
                      if p.suffix.lower() in IMAGE_EXTS and p.with_suffix(".txt").is_file()]
        if not self.items:
            raise ValueError(f"data: folder {str(folder)!r} has no images with a .txt caption of the same name")
        self.seed = seed

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
            sched = DDIMScheduler.from_config(self.pipe.scheduler.config)
            unet = self.pipe.unet
            size = int(unet.config.sample_size)
            g = torch.Generator().manual_seed(10_007 * self.seed + key)
            lat = torch.randn((n, unet.config.in_channels, size, size), generator=g).to(unet.device, unet.dtype)
            cond, uncond = encode_prompts(self.pipe, caps), encode_prompts(self.pipe, [""] * n)
            sched.set_timesteps(self.steps)
            for t in sched.timesteps:
                out = unet(torch.cat([lat, lat]), t, torch.cat([cond, uncond])).sample
                c, u = out.chunk(2)
                lat = sched.step(u + self.guidance * (c - u), t, lat).prev_sample
            self.cache = (key, lat, caps)
        return self.cache[1], list(self.cache[2])


@torch.no_grad()
def encode_prompts(pipe: DiffusionPipeline, prompts: list[str]) -> torch.Tensor:
    tok = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt")
    return pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device))[0]


def shapes_prompts(n: int = 2000, seed: int = 0) -> list[str]:
    from backend.world.shapes import random_scene

    rng = random.Random(seed)
    return [random_scene(rng).caption for _ in range(n)]


def make_data(pipe: DiffusionPipeline, spec: str, guidance: float, seed: int = 0, pool: int = 0):
    """``auto`` (Shapes for the embedded model and tiny-arch, teacher samples otherwise), ``shapes``,
    ``teacher`` (Shapes prompts), ``teacher:PROMPTS.txt`` or a folder of captioned images."""
    source = getattr(pipe, "speedlab_source", "")
    if spec == "auto":
        spec = "shapes" if source in ("shapes", "tiny-arch") or _is_shapes_tokenizer(pipe) else "teacher"
    if spec == "shapes":
        return ShapesData(pipe, seed, pool)
    if spec == "teacher" or spec.startswith("teacher:"):
        prompts = shapes_prompts(seed=seed)
        if spec.startswith("teacher:"):
            path = Path(spec.split(":", 1)[1])
            if not path.is_file():
                raise ValueError(f"data: prompts file {str(path)!r} does not exist")
            from backend.runs.variant import read_text_file

            prompts = [line.strip() for line in read_text_file(path, "data: prompts file").splitlines() if line.strip()]
            if not prompts:
                raise ValueError(f"data: prompts file {str(path)!r} has no prompts")
        return TeacherData(pipe, prompts, guidance, seed=seed)
    return FolderData(pipe, spec, seed)


def _is_shapes_tokenizer(pipe: DiffusionPipeline) -> bool:
    vocab = getattr(pipe.tokenizer, "get_vocab", dict)()
    return "triangle" in vocab and len(vocab) < 200
