"""Text conditioning for direct U-Net calls (calibration, fine-tuning, distillation) on every model family.

SD 1.x / 2.x U-Nets take the text encoder's hidden states; SDXL's also take ``added_cond_kwargs``: the second
encoder's pooled embedding (``text_embeds``) and the size/crop micro-conditioning (``time_ids``). Both come from
the pipeline's own ``encode_prompt`` / ``_get_add_time_ids``, so training sees what sampling sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TextCond:
    """Per-prompt U-Net conditioning; indexes, concatenates and moves like a batch tensor."""

    hidden: torch.Tensor
    text_embeds: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.hidden)

    def _map(self, fn) -> TextCond:
        return TextCond(fn(self.hidden), *(None if t is None else fn(t) for t in (self.text_embeds, self.time_ids)))

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
        extra = [None if getattr(first, k) is None else torch.cat([getattr(p, k) for p in parts])
                 for k in ("text_embeds", "time_ids")]
        return TextCond(torch.cat([p.hidden for p in parts]), *extra)

    def unet_kwargs(self) -> dict:
        """Keyword arguments of a diffusers U-Net call for this conditioning."""
        kwargs: dict = {"encoder_hidden_states": self.hidden}
        if self.text_embeds is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": self.text_embeds, "time_ids": self.time_ids}
        return kwargs


def pixel_size(pipe, latent_hw: tuple[int, int] | None = None) -> tuple[int, int]:
    """Image size (H, W) in pixels of latents of size ``latent_hw`` (default: the U-Net's native size)."""
    h, w = latent_hw or (pipe.unet.config.sample_size,) * 2
    return int(h) * pipe.vae_scale_factor, int(w) * pipe.vae_scale_factor


@torch.no_grad()
def encode(pipe, prompts: list[str], latent_hw: tuple[int, int] | None = None) -> tuple[TextCond, TextCond]:
    """(conditional, unconditional) conditioning of the prompts, as the pipeline itself builds it for CFG."""
    device = next(pipe.unet.parameters()).device
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
