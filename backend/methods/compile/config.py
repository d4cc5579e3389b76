"""torch.compile's knobs: the Variant section ``"compile"``."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from backend.methods.params import MethodConfig, param

MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
BACKENDS = ("inductor", "aot_eager")


@dataclasses.dataclass
class CompileConfig(MethodConfig):
    """``{"mode": "default"}``: torch.compile of the denoiser (dynamic=False; compiled on the first call)."""

    section: ClassVar[str] = "compile"

    mode: str = param("default", "torch.compile mode (inductor)", choices=MODES)
    backend: str = param("inductor", "inductor: generated C++/OpenMP kernels (needs a C++ compiler) · aot_eager: "
                                     "traced graphs run eagerly (checks tracing; no speed-up)", choices=BACKENDS)
