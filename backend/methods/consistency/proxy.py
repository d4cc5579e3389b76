"""The latent proxy reward model (LRM): scores latents against the prompt, trained online on the expert's preferences.

The student optimises this smooth latent-space model instead of the pixel reward, so its gradient never
sees the expert's pixel front-end (where high-frequency exploits live). The proxy is refit every step to
the expert's pairwise preferences over (student prediction, EMA-target prediction, real latent) triplets
by the KL divergence between the expert's and the proxy's two-way softmaxes (RG-LCD, Sec. 4.2).
"""

from __future__ import annotations

import torch
from torch import nn

PAIRS = ((0, 1), (0, 2), (1, 2))  # (student, target), (student, real), (target, real)


class LatentProxyReward(nn.Module):
    """Conv features on the latent, cross-attention to the prompt's token embeddings, a score per image."""

    def __init__(self, latent_channels: int = 4, text_dim: int = 64, width: int = 64, grid: int = 4):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(latent_channels, width // 2, 3, 1, 1), nn.GroupNorm(8, width // 2), nn.SiLU(),
            nn.Conv2d(width // 2, width, 3, 2, 1), nn.GroupNorm(8, width), nn.SiLU(),
            nn.Conv2d(width, width, 3, 1, 1), nn.GroupNorm(8, width), nn.SiLU(),
            nn.AdaptiveAvgPool2d(grid),
        )
        self.pos = nn.Parameter(torch.zeros(1, grid * grid, width))
        self.text = nn.Linear(text_dim, width)
        self.attn = nn.MultiheadAttention(width, 4, batch_first=True)
        self.head = nn.Sequential(nn.Linear(2 * width, width), nn.SiLU(), nn.Linear(width, 1))

    def forward(self, latents: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        feats = self.convs(latents.float()).flatten(2).transpose(1, 2) + self.pos  # B × cells × width
        txt = self.text(text_tokens.float())
        mixed, _ = self.attn(feats, txt, txt)
        return self.head(torch.cat([feats, mixed], dim=-1)).squeeze(-1).mean(1)


def preference_kl(proxy_scores: torch.Tensor, expert_scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Σ over the three pairs of KL(expert ∥ proxy) between two-way softmaxes; scores are B × 3 (logits)."""
    loss = proxy_scores.new_zeros(())
    for i, j in PAIRS:
        expert = torch.stack([expert_scores[:, i], expert_scores[:, j]], 1) / temperature
        proxy = torch.stack([proxy_scores[:, i], proxy_scores[:, j]], 1)
        loss = loss + nn.functional.kl_div(proxy.log_softmax(1), expert.log_softmax(1), log_target=True,
                                           reduction="batchmean")
    return loss


def pair_agreement(proxy_scores: torch.Tensor, expert_scores: torch.Tensor) -> float:
    """Fraction of pairs the proxy orders like the expert (a training diagnostic)."""
    hits = [((proxy_scores[:, i] > proxy_scores[:, j]) == (expert_scores[:, i] > expert_scores[:, j])).float()
            for i, j in PAIRS]
    return float(torch.cat(hits).mean())
