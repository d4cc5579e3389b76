"""ToMe's knobs: the Variant section ``"tome"``."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from backend.methods.params import MethodConfig, param


@dataclasses.dataclass
class ToMeConfig(MethodConfig):
    """Token merging for Stable Diffusion (tomesd): merge similar tokens before attention, unmerge after.

    ``{"ratio": 0.5, "max_downsample": 1, "sx": 2, "sy": 2}``.
    """

    section: ClassVar[str] = "tome"

    ratio: float = param(0.5, "fraction of tokens merged away in each patched transformer block (0 = off, "
                              "bit-identical to the baseline; below 1)", minimum=0.0, maximum=1.0)
    max_downsample: int = param(1, "patch only blocks at most this many times downsampled (1, 2, 4 or 8; 1 = the "
                                   "highest-resolution blocks, tomesd's default)", choices=(1, 2, 4, 8))
    sx: int = param(2, "stride of the destination-token grid along x", minimum=1, maximum=8)
    sy: int = param(2, "stride of the destination-token grid along y", minimum=1, maximum=8)
    use_rand: bool = param(False, "pick each window's destination token at random (tomesd's default) — drawn from "
                                  "torch's global generator, so the same seed no longer gives the same image; off: "
                                  "the top-left token (deterministic)")

    def validate(self) -> None:
        if not 0 <= self.ratio < 1:
            raise ValueError(f"tome.ratio: {self.ratio} is not allowed; allowed: 0 ≤ ratio < 1")
