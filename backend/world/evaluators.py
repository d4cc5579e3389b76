"""The two attribute networks of the Shapes world: the judge (all quality metrics) and the reward model.

Both read a 64×64 image in [-1, 1] and predict, for each of the 9 grid cells, the shape
(or empty), colour and size. They differ in architecture and training seed, so a student
trained to please the reward model does not thereby fool the judge.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from backend.world.shapes import COLORS, N_CELLS, SHAPES, SIZES

N_SHAPE, N_COLOR, N_SIZE = len(SHAPES) + 1, len(COLORS), len(SIZES)


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.GELU())


class CellHeads(nn.Module):
    """Maps a feature vector per cell (B, 9, D) to shape / colour / size logits."""

    def __init__(self, dim: int):
        super().__init__()
        self.shape, self.color, self.size = nn.Linear(dim, N_SHAPE), nn.Linear(dim, N_COLOR), nn.Linear(dim, N_SIZE)

    def forward(self, cells: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"shape": self.shape(cells), "color": self.color(cells), "size": self.size(cells)}


class Judge(nn.Module):
    """Conv stack to 8×8, a global 256-d feature (used by fd_shapes), per-cell heads."""

    feature_dim = 256

    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(
            _block(3, 32, 1), _block(32, 64, 2), _block(64, 64, 1), _block(64, 128, 2), _block(128, 128, 1),
            _block(128, 128, 2),
        )
        self.features_fc = nn.Sequential(nn.Flatten(), nn.Linear(128 * 8 * 8, self.feature_dim), nn.GELU())
        self.to_cells = nn.Linear(self.feature_dim, N_CELLS * 64)
        self.heads = CellHeads(64)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_fc(self.convs(images))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        cells = torch.nn.functional.gelu(self.to_cells(self.features(images))).view(-1, N_CELLS, 64)
        return self.heads(cells)


class RewardNet(nn.Module):
    """A different design: SiLU, average pooling, features pooled to the 3×3 grid, then mixed per cell."""

    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        for cout in (24, 48, 96):
            layers += [nn.Conv2d(cin, cout, 3, 1, 1), nn.GroupNorm(4, cout), nn.SiLU(), nn.AvgPool2d(2)]
            cin = cout
        self.convs = nn.Sequential(*layers, nn.Conv2d(96, 96, 3, 1, 1), nn.GroupNorm(4, 96), nn.SiLU())
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.mix = nn.Linear(96 * 9, N_CELLS * 96)
        self.heads = CellHeads(96)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.pool(self.convs(images)).flatten(1)
        cells = torch.nn.functional.silu(self.mix(pooled)).view(-1, N_CELLS, 96)
        return self.heads(cells)


def scene_targets(scenes) -> dict[str, torch.Tensor]:
    """Stacked per-cell labels (shape / color / size, as in Scene.cell_labels) of a list of scenes."""
    per = [s.cell_labels() for s in scenes]
    return {k: torch.from_numpy(np.stack([p[k] for p in per])) for k in ("shape", "color", "size")}


def cell_loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy on shape for every cell, on colour and size where an object is."""
    ce = nn.functional.cross_entropy
    loss = ce(logits["shape"].flatten(0, 1), labels["shape"].flatten())
    for key in ("color", "size"):
        loss = loss + ce(logits[key].flatten(0, 1), labels[key].flatten(), ignore_index=-1)
    return loss


def exact_match(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per image: True when every cell's shape and every object's colour and size are right."""
    ok = logits["shape"].argmax(-1) == labels["shape"]
    for key in ("color", "size"):
        ok &= (logits[key].argmax(-1) == labels[key]) | (labels[key] < 0)
    return ok.all(dim=1)
