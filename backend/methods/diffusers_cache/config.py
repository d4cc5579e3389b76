"""The diffusers cache hooks' knobs (the Variant section ``"diffusers_cache"``) and which model family runs which
hook: :data:`REFUSED` is the one table of (kind, family) pairs that do not run correctly, each with the reason
(established by tests/test_peers_cache.py on U-Nets and tests/test_peers_dit_cache.py on tiny PixArt / SD3 / Flux)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from backend.methods.params import MethodConfig, param

UNET_FAMILIES = ("sd1", "sd2", "sdxl", "unet")
_ON_UNET = {
    "fbc": "FirstBlockCache fails on a U-Net (its hooks expect a stack of transformer blocks; IndexError)",
    "faster": "FasterCache fails on a U-Net (its attention hooks permute 5-D video/DiT tensors)",
    "taylorseer": "TaylorSeer matches no U-Net module by default and needs the cache_context DiT pipelines set",
    "magcache": "MagCache hooks a stack of transformer blocks, which a U-Net does not have",
}
# kind -> {family: why that family does not run it}; every family not named runs it correctly
REFUSED: dict[str, dict[str, str]] = {
    "pab": {},
    "fbc": {**dict.fromkeys(UNET_FAMILIES, _ON_UNET["fbc"]),
            "sd3": "FirstBlockCache's tail hook takes the residual of the text stream too, which SD3's last block "
                   "(context_pre_only) returns as None (TypeError)"},
    "faster": {**dict.fromkeys(UNET_FAMILIES, _ON_UNET["faster"]),
               "flux": "FasterCache's hooks take image or video latents (BCHW / BCFHW / BFCHW); Flux packs its latents "
                       "as a token sequence (B×N×C): each format fails, guidance-distilled or not (IndexError / "
                       "TypeError)"},
    "taylorseer": dict.fromkeys(UNET_FAMILIES, _ON_UNET["taylorseer"]),
    "magcache": dict.fromkeys(UNET_FAMILIES, _ON_UNET["magcache"]),
}
KINDS = tuple(REFUSED)
UNET_KINDS = tuple(k for k, refused in REFUSED.items() if not set(UNET_FAMILIES) & set(refused))
DIT_ONLY = {k: _ON_UNET[k] for k in KINDS if k not in UNET_KINDS}  # hooks that only work on transformer denoisers


@dataclasses.dataclass
class DiffusersCacheConfig(MethodConfig):
    """A diffusers cache hook on the denoiser: ``{"kind": "pab", "skip_range": 2}``.

    On U-Nets: pab (PyramidAttentionBroadcast). DiT only: fbc (FirstBlockCache; not on SD3), faster (FasterCache;
    not on Flux), taylorseer (TaylorSeer), magcache (MagCache, its ratios calibrated on the model when attached).
    Not offered: SeaCache (it finds no repeated transformer blocks on a U-Net, and is DiT-only otherwise).
    """

    section: ClassVar[str] = "diffusers_cache"

    kind: str = param("pab", "pab: PyramidAttentionBroadcast (reuses attention outputs; every family) · DiT only: "
                             "fbc (FirstBlockCache; PixArt, Flux), faster (FasterCache; PixArt, SD3), taylorseer "
                             "(TaylorSeer), magcache (MagCache: calibrates its ratios on the model, one generation, "
                             "when attached)",
                      choices=KINDS, refused=REFUSED)
    skip_range: int = param(2, "pab / faster: recompute attention (faster: and the unconditional batch) every N-th "
                               "evaluation (1 = never skip, identical to no cache); taylorseer: the cache interval "
                               "(1 = never predict); magcache: at most N-1 steps in a row reuse the blocks' residual "
                               "(1 = never skip)", minimum=1, maximum=10)
    timestep_from: int = param(100, "pab / faster: skip only at timesteps above this (diffusers' default 100)",
                               minimum=0, maximum=1000)
    timestep_to: int = param(800, "pab / faster: skip only at timesteps below this (diffusers' default 800)",
                             minimum=0, maximum=1000)
    threshold: float = param(0.05, "fbc: reuse the cached residual when the first block's output changed by less "
                                   "than this (relative; 0 = never reuse); magcache: the error budget the predicted "
                                   "magnitude changes of skipped steps may add up to (diffusers' default 0.06)",
                             minimum=0.0, maximum=1.0)

    def validate(self) -> None:
        if self.timestep_from >= self.timestep_to:
            raise ValueError(f"diffusers_cache.timestep_from: {self.timestep_from} is not below timestep_to "
                             f"{self.timestep_to}; allowed: timestep_from < timestep_to")
