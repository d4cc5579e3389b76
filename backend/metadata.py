"""What Speedlab records on the objects it builds and in the files it writes: one typed record per pipeline
(:class:`PipelineInfo`), one per U-Net (:class:`UnetInfo`), and the names of Speedlab's files and hooks.

Every other module reads and writes this metadata through :func:`pipeline_info` / :func:`unet_info`; no other
module puts attributes of its own on a diffusers object.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_PIPE_ATTR = "speedlab_info"
_UNET_ATTR = "speedlab_unet_info"
# files and hooks Speedlab names
CONSISTENCY_META_FILE = "speedlab_consistency.json"  # a consistency student's folder: kind, base signature, schedule
DEEPCACHE_HOOK = "speedlab_deepcache"  # the diffusers hook registry name of DeepCache's U-Net hook
SD_DEFAULTS = {"steps": 50, "guidance": 7.5}


@dataclass
class PipelineInfo:
    """A loaded or built pipeline: where it came from and what was done to it."""

    source: str = ""  # the model as given: "shapes", a folder, a single file, a Hub id, "sd15-arch", ...
    family: str = ""  # sd1 | sd2 | sdxl (backend.models.model_family)
    defaults: dict = field(default_factory=lambda: dict(SD_DEFAULTS))  # steps / guidance / height / width
    variant: Any = None  # the Variant it was built from (None: a bare loaded model)
    applied: tuple[str, ...] = ()  # the method sections applied, in the order they were applied
    kernels: str | None = None  # what a quantized U-Net actually runs (None: the model's own fp kernels)
    model_size_mb: float | None = None  # the U-Net's size as stored (packed low-bit weights), when not fp
    consistency: dict | None = None  # a consistency student's metadata (its CONSISTENCY_META_FILE)


@dataclass
class UnetInfo:
    """A U-Net module: its quantization state and the fingerprint of the fp weights it was made from."""

    quant: Any = None  # backend.methods.quant.model.QuantState while quantized
    fingerprint: str | None = None  # the fp base weights' fingerprint, kept when the weights are replaced


def _record(obj: Any, attr: str, kind: type) -> Any:
    info = obj.__dict__.get(attr)
    if info is None:
        info = kind()
        object.__setattr__(obj, attr, info)  # object's: nn.Module and ConfigMixin would register or refuse it
    return info


def pipeline_info(pipe: Any) -> PipelineInfo:
    """The pipeline's record, created empty on first use (a pipeline not loaded by Speedlab has defaults)."""
    return _record(pipe, _PIPE_ATTR, PipelineInfo)


def set_pipeline_info(pipe: Any, info: PipelineInfo) -> PipelineInfo:
    """Attach a copy of ``info`` to ``pipe`` (dicts copied: the two pipelines' records stay independent)."""
    mine = copy.copy(info)
    mine.defaults = dict(info.defaults)
    object.__setattr__(pipe, _PIPE_ATTR, mine)
    return mine


def unet_info(unet: Any) -> UnetInfo:
    """The U-Net's record, created empty on first use."""
    return _record(unet, _UNET_ATTR, UnetInfo)


def checkpoint_base_model(folder: Path, section: str) -> str | None:
    """The model a checkpoint folder of method ``section`` was made from: ``base_model`` in its ``*SECTION*.json``
    (quant_config.json, speedlab_consistency.json); None when no such file says."""
    for meta in sorted(Path(folder).glob(f"*{section}*.json")):
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("base_model"):
            return str(data["base_model"])
    return None
