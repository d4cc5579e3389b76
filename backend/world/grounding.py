"""Cross-attention grounding loss for training shapes-sd (after TokenCompose, CVPR 2024).

Denoising alone taught the small U-Net *which* attributes a two-object prompt names but not
*where* each goes: its colours and shapes landed on the left or the right object at chance.
The renderer knows where every object is, so training adds a loss on the U-Net's
cross-attention maps: each attribute word of an object (size, colour, shape) should put its
attention mass inside that object's cell. Inference is unchanged (stock attention processors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backend.world.prompts import parse_caption
from backend.world.shapes import CELL_CENTERS, COLORS, IMAGE_SIZE, JITTER, SHAPES, SIZES

LATENT_SIZE = 16
MIN_SIDE = 8  # attention maps smaller than this (the 4×4 mid block) are too coarse for a 3×3 grid


def object_masks(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per caption: the cells of its (up to two) objects as soft 16×16 masks, and for each word
    position (after <bos>) the index of the object it describes (-1 for other words).

    Returns masks (N, 2, 16, 16) and word_object (N, max_words) long.
    """
    attr_words = set(SIZES) | set(COLORS) | set(SHAPES)
    n_words = max(len(c.split()) for c in captions)
    masks = torch.zeros(len(captions), 2, IMAGE_SIZE, IMAGE_SIZE)
    word_object = torch.full((len(captions), n_words), -1, dtype=torch.long)
    for i, caption in enumerate(captions):
        scene = parse_caption(caption)
        for k, obj in enumerate(scene.objects):
            r = SIZES[obj.size] / 2 + JITTER
            cy, cx = CELL_CENTERS[obj.cell[0]], CELL_CENTERS[obj.cell[1]]
            masks[i, k, int(cy - r):int(cy + r) + 1, int(cx - r):int(cx + r) + 1] = 1.0
        k = -1
        for j, word in enumerate(caption.split()):
            if word in ("a", "an"):
                k += 1
            elif word in attr_words:
                word_object[i, j] = k
    return F.adaptive_avg_pool2d(masks, LATENT_SIZE), word_object


class CrossAttentionRecorder:
    """Attention processor for cross-attention layers that also keeps their attention probabilities.

    Wraps the layer's existing processor (its output is unchanged) and appends (B, heads, HW, T) maps
    to ``maps``; ``install`` puts it on every ``attn2`` of a U-Net (or of a PixArt transformer).
    """

    def __init__(self, inner, maps: list[torch.Tensor]):
        self.inner, self.maps = inner, maps

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        b, hw, _ = hidden_states.shape
        q = attn.to_q(hidden_states).view(b, hw, attn.heads, -1).transpose(1, 2)
        k = attn.to_k(encoder_hidden_states).view(b, encoder_hidden_states.shape[1], attn.heads, -1).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) * attn.scale
        if attention_mask is not None:  # an additive (B, 1, T) bias over the text tokens (PixArt's padding mask)
            logits = logits + attention_mask.reshape(b, 1, -1, k.shape[2])
        self.maps.append(logits.softmax(-1))
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)

    @classmethod
    def install(cls, unet) -> list[torch.Tensor]:
        """Wrap the U-Net's cross-attention processors; returns the list the maps are appended to."""
        maps: list[torch.Tensor] = []
        unet.set_attn_processor({
            name: cls(proc, maps) if name.endswith("attn2.processor") else proc
            for name, proc in unet.attn_processors.items()
        })
        return maps


def grounding_loss(maps: list[torch.Tensor], masks: torch.Tensor, word_object: torch.Tensor) -> torch.Tensor:
    """Mean over layers and attribute words of 1 − (the word's attention mass inside its object's cell).

    maps: (B, heads, HW, T) per layer, token 0 being <bos>; masks (B, 2, 16, 16); word_object (B, W),
    -1 for words that are not object attributes (and for whole rows whose prompt was dropped for CFG).
    """
    b, n_words = word_object.shape
    valid = word_object >= 0
    if not valid.any():
        return maps[0].new_zeros(())
    losses = []
    for probs in maps:
        side = int(probs.shape[2] ** 0.5)
        if side < MIN_SIDE:
            continue
        cells = F.adaptive_avg_pool2d(masks, side).flatten(2)  # (B, 2, HW)
        words = probs.mean(1)[:, :, 1:1 + n_words]  # (B, HW, W): the caption's words after <bos>
        words = words / words.sum(1, keepdim=True).clamp_min(1e-8)  # where each word looks
        target = cells.gather(1, word_object.clamp_min(0)[:, :, None].expand(b, n_words, cells.shape[2]))
        inside = (words.transpose(1, 2) * target).sum(-1)  # (B, W)
        losses.append((1 - inside)[valid].mean())
    return torch.stack(losses).mean()
