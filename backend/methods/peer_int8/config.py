"""The peer int8 quantizers' knobs: the Variant section ``"peer_int8"``."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from backend.methods.params import MethodConfig, param

BACKENDS = ("torchao", "quanto", "dynamic")


@dataclasses.dataclass
class PeerInt8Config(MethodConfig):
    """int8 by a library users already have: ``{"backend": "torchao"}`` (or ``"quanto"``, ``"dynamic"``)."""

    section: ClassVar[str] = "peer_int8"

    backend: str = param("torchao", "torchao: Int8DynamicActivationInt8WeightConfig (Linear; per-token dynamic "
                                    "activations) · quanto: optimum-quanto W8A8 (Linear and Conv2d), activation "
                                    "ranges calibrated on the model's own samples, then frozen · dynamic: torch.ao "
                                    "quantize_dynamic (Linear only, int8 weights, dynamic activations)",
                         choices=BACKENDS)
    calib_prompts: int = param(4, "quanto: prompts whose sampling calibrates the activation ranges",
                               minimum=1, maximum=64)
    calib_steps: int = param(4, "quanto: denoising steps of each calibration run", minimum=1, maximum=50)
