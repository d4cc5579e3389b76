"""torch.compile of the denoiser as a method: ``apply(pipe, CompileConfig(mode="default"))``.

The denoiser is compiled in place (``nn.Module.compile``, dynamic=False): the compile happens on the first
generation, which timed rounds absorb in their warm-up (``bench peers`` reports the first call apart). Refused
with one line where inductor has no C++ compiler. It stacks with methods that keep the module's per-step
behaviour static; per-step Python state (caches, token merging, per-step activation scales) would recompile at
every step, so those stacks are refused by the registry (``conflicts``).
"""

from __future__ import annotations

import os
import shutil

from backend.methods.compile.config import BACKENDS, MODES, CompileConfig
from backend.models import denoiser

__all__ = ["BACKENDS", "MODES", "CompileConfig", "apply", "compiler", "denoiser"]



def compiler() -> str | None:
    """The C++ compiler inductor would use ($CXX, else its configured candidates), or None when there is none."""
    from torch._inductor import config as inductor

    candidates = [os.environ.get("CXX"), *inductor.cpp.cxx]
    return next((shutil.which(c) for c in candidates if c and shutil.which(c)), None)


def apply(pipe, config: CompileConfig | dict | None = None) -> None:
    """Compile the denoiser in place (on its first call)."""
    if not isinstance(config, CompileConfig):
        config = CompileConfig.from_dict(config)
    if config.backend == "inductor" and compiler() is None:
        raise ValueError("compile.backend 'inductor': no C++ compiler found (inductor runs $CXX or g++); install g++ "
                         "or use compile.backend 'aot_eager'")
    mode = None if config.backend != "inductor" else config.mode
    denoiser(pipe).compile(mode=mode, dynamic=False, backend=config.backend)
