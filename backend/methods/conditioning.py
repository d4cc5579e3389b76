"""Text conditioning for direct denoiser calls (calibration, fine-tuning, distillation) on every model family, and
:func:`predict`, the one direct call of a denoiser (U-Net or PixArt transformer).

SD 1.x / 2.x U-Nets take the text encoder's hidden states; SDXL's also take ``added_cond_kwargs``: the second
encoder's pooled embedding (``text_embeds``) and the size/crop micro-conditioning (``time_ids``). A PixArt transformer
takes the T5 states with their attention ``mask`` (and, for PixArt-α at 1024, the ``resolution`` / ``aspect_ratio``
micro-conditioning); an SD3 transformer the joint text states and the ``pooled`` CLIP projections. All come from the
pipeline's own ``encode_prompt`` (and SDXL's ``_get_add_time_ids``), so
training sees what sampling sees.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from backend.models import denoiser, model_defaults, model_family


@dataclass
class TextCond:
    """Per-prompt U-Net conditioning; indexes, concatenates and moves like a batch tensor."""

    hidden: torch.Tensor
    text_embeds: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # PixArt: the text's attention mask
    resolution: torch.Tensor | None = None  # PixArt-α at 1024: micro-conditioning
    aspect_ratio: torch.Tensor | None = None
    pooled: torch.Tensor | None = None  # SD3: the pooled CLIP projections

    def __len__(self) -> int:
        return len(self.hidden)

    def _map(self, fn) -> TextCond:
        return TextCond(**{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                           for f in dataclasses.fields(self)})

    def __getitem__(self, idx) -> TextCond:
        return self._map(lambda t: t[idx])

    def to(self, *args, **kwargs) -> TextCond:
        return self._map(lambda t: t.to(*args, **kwargs))

    def repeat(self, n: int) -> TextCond:
        """A batch of n copies of a one-prompt conditioning (or each row n times)."""
        return self._map(lambda t: t.repeat_interleave(n, 0))

    @staticmethod
    def cat(parts: list[TextCond]) -> TextCond:
        first = parts[0]
        return TextCond(**{f.name: None if getattr(first, f.name) is None else
                           torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(first)})

    def unet_kwargs(self) -> dict:
        """Keyword arguments of a diffusers denoiser call (U-Net or PixArt transformer) for this conditioning."""
        kwargs: dict = {"encoder_hidden_states": self.hidden}
        if self.pooled is not None:  # SD3
            return {**kwargs, "pooled_projections": self.pooled}
        if self.mask is not None:  # PixArt
            kwargs["encoder_attention_mask"] = self.mask
            kwargs["added_cond_kwargs"] = {"resolution": self.resolution, "aspect_ratio": self.aspect_ratio}
            return kwargs
        if self.text_embeds is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": self.text_embeds, "time_ids": self.time_ids}
        return kwargs


def predict(net: torch.nn.Module, z: torch.Tensor, t: torch.Tensor, cond: TextCond,
            timestep_cond: torch.Tensor | None = None) -> torch.Tensor:
    """The denoiser's output for latents ``z`` at timesteps ``t`` in its scheduler's parameterisation (a PixArt
    transformer's learned-variance channels dropped, as its pipeline does); ``timestep_cond``: a U-Net's w-embedding."""
    extra = {"timestep_cond": timestep_cond} if timestep_cond is not None else {}
    out = net(z, timestep=t, **cond.unet_kwargs(), **extra).sample
    return out[:, : z.shape[1]] if out.shape[1] == 2 * z.shape[1] else out


def pixel_size(pipe, latent_hw: tuple[int, int] | None = None) -> tuple[int, int]:
    """Image size (H, W) in pixels of latents of size ``latent_hw`` (default: the denoiser's native size)."""
    h, w = latent_hw or (denoiser(pipe).config.sample_size,) * 2
    return int(h) * pipe.vae_scale_factor, int(w) * pipe.vae_scale_factor


@torch.no_grad()
def encode(pipe, prompts: list[str], latent_hw: tuple[int, int] | None = None) -> tuple[TextCond, TextCond]:
    """(conditional, unconditional) conditioning of the prompts, as the pipeline itself builds it for CFG."""
    device = next(denoiser(pipe).parameters()).device
    family = model_family(pipe)
    if family == "pixart":
        return _encode_pixart(pipe, prompts, latent_hw, device)
    if family == "sd3":
        tokens = int(model_defaults(pipe).get("max_sequence_length") or 256)
        cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
            list(prompts), None, None, device=device, do_classifier_free_guidance=True, max_sequence_length=tokens)
        return TextCond(cond, pooled=pooled), TextCond(uncond, pooled=uncond_pooled)
    out = pipe.encode_prompt(prompt=list(prompts), device=device, num_images_per_prompt=1,
                             do_classifier_free_guidance=True)
    if len(out) == 2:  # SD 1.x / 2.x and other single-encoder pipelines
        return TextCond(out[0]), TextCond(out[1])
    cond, uncond, pooled, pooled_uncond = out
    size = pixel_size(pipe, latent_hw)
    proj = pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None else pooled.shape[-1]
    ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=cond.dtype, text_encoder_projection_dim=int(proj))
    ids = ids.to(device).repeat(len(prompts), 1)
    return TextCond(cond, pooled, ids), TextCond(uncond, pooled_uncond, ids.clone())


def _encode_pixart(pipe, prompts: list[str], latent_hw: tuple[int, int] | None, device) -> tuple[TextCond, TextCond]:
    tokens = int(model_defaults(pipe).get("max_sequence_length") or 300)
    cond, mask, uncond, uncond_mask = pipe.encode_prompt(list(prompts), do_classifier_free_guidance=True,
                                                         device=device, max_sequence_length=tokens)
    extra: dict = {}
    if pipe.transformer.config.use_additional_conditions:  # PixArt-α 1024: the pipeline's size conditioning
        h, w = pixel_size(pipe, latent_hw)
        extra = {"resolution": torch.tensor([[h, w]], dtype=cond.dtype, device=device).repeat(len(prompts), 1),
                 "aspect_ratio": torch.tensor([[h / w]], dtype=cond.dtype, device=device).repeat(len(prompts), 1)}
    return TextCond(cond, mask=mask, **extra), TextCond(uncond, mask=uncond_mask,
                                                        **{k: v.clone() for k, v in extra.items()})
