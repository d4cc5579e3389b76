"""The diffusers cache hooks' knobs: the Variant section ``"diffusers_cache"``."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from backend.methods.params import MethodConfig, param

UNET_KINDS = ("pab",)  # attach to a UNet2DConditionModel and run correctly (tests/test_peers_cache.py)
# diffusers 0.42 hooks that only work on transformer (DiT) denoisers, and what they do on a U-Net
DIT_ONLY = {
    "fbc": "FirstBlockCache fails on a U-Net (its hooks expect a stack of transformer blocks; IndexError)",
    "faster": "FasterCache fails on a U-Net (its attention hooks permute 5-D video/DiT tensors)",
    "taylorseer": "TaylorSeer matches no U-Net module by default and needs the cache_context DiT pipelines set",
}
NOT_OFFERED = {
    "magcache": "MagCache needs model-specific mag_ratios calibrated per model and hooks transformer block stacks",
    "seacache": "SeaCache finds no repeated transformer blocks on a U-Net",
}
KINDS = (*UNET_KINDS, *DIT_ONLY)


@dataclasses.dataclass
class DiffusersCacheConfig(MethodConfig):
    """A diffusers cache hook on the denoiser: ``{"kind": "pab", "skip_range": 2}``.

    On U-Nets: pab (PyramidAttentionBroadcast). DiT only: fbc (FirstBlockCache), faster (FasterCache),
    taylorseer (TaylorSeer). Not offered: MagCache (per-model calibrated ratios), SeaCache (DiT blocks only).
    """

    section: ClassVar[str] = "diffusers_cache"

    kind: str = param("pab", "pab: PyramidAttentionBroadcast (reuses attention outputs; works on U-Nets) · DiT only: "
                             "fbc (FirstBlockCache), faster (FasterCache), taylorseer (TaylorSeer)", choices=KINDS)
    skip_range: int = param(2, "pab / faster: recompute attention every N-th evaluation (1 = never skip, identical to "
                               "no cache); taylorseer: the cache interval", minimum=1, maximum=10)
    timestep_from: int = param(100, "pab / faster: skip only at timesteps above this (diffusers' default 100)",
                               minimum=0, maximum=1000)
    timestep_to: int = param(800, "pab / faster: skip only at timesteps below this (diffusers' default 800)",
                             minimum=0, maximum=1000)
    threshold: float = param(0.05, "fbc: reuse the cached residual when the first block's output changed by less "
                                   "than this (relative)", minimum=0.0, maximum=1.0)

    def validate(self) -> None:
        if self.timestep_from >= self.timestep_to:
            raise ValueError(f"diffusers_cache.timestep_from: {self.timestep_from} is not below timestep_to "
                             f"{self.timestep_to}; allowed: timestep_from < timestep_to")
