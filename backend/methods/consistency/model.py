"""Loading a distilled student into a pipeline (apply), saving students, and checking they fit the base model.

A checkpoint folder holds ``backend.metadata.CONSISTENCY_META_FILE`` (kind, base model signature, distilled schedule)
and either a whole stock pipeline with the student denoiser and the ``LCMScheduler`` or a LoRA plus the
``LCMScheduler`` config; what each looks like per model family is :mod:`backend.methods.consistency.students`.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, FlowMatchLCMScheduler, LCMScheduler
from safetensors import SafetensorError

from backend.metadata import CONSISTENCY_META_FILE, pipeline_info
from backend.methods.consistency.config import ConsistencyConfig
from backend.methods.consistency.students import lcm_scheduler, students_for
from backend.models import denoiser, set_denoiser

META = CONSISTENCY_META_FILE
ARCH_KEYS = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "cross_attention_dim",
             "down_block_types", "up_block_types", "attention_head_dim", "sample_size", "num_layers", "patch_size")


def base_signature(unet: torch.nn.Module) -> dict:
    """Architecture and a dtype-robust summary of the teacher's weights (mean |w| of up to 64 tensors)."""
    cfg = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in unet.config.items() if k in ARCH_KEYS}
    names = sorted(n for n, _ in unet.named_parameters() if "lora" not in n and "cond_proj" not in n)
    params = dict(unet.named_parameters())
    picked = names[:: max(1, len(names) // 64)][:64]
    stats = [float(params[n].detach().float().abs().mean()) for n in picked]
    return {"config": cfg, "names": picked, "stats": stats}


def same_base(sig: dict, unet: torch.nn.Module) -> bool:
    mine = base_signature(unet)
    if mine["config"] != sig.get("config") or mine["names"] != sig.get("names"):
        return False
    return torch.allclose(torch.tensor(mine["stats"]), torch.tensor(sig["stats"]), rtol=2e-2, atol=1e-5)


def read_meta(checkpoint: str | Path) -> dict:
    path = Path(checkpoint)
    if not path.is_dir():
        raise ValueError(f"consistency.checkpoint: {str(path)!r} is not a folder; give a folder written by "
                         "`python -m backend finetune lcd`")
    meta_path = path / META
    if not meta_path.is_file():
        raise ValueError(f"consistency.checkpoint: {str(path)!r} is not a consistency checkpoint (no {META}); "
                         "make one with `python -m backend finetune lcd`")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"consistency.checkpoint: {meta_path} is not valid JSON ({exc.msg})") from exc
    if meta.get("kind") not in ("full", "lora"):
        raise ValueError(f"consistency.checkpoint: {meta_path} has kind {meta.get('kind')!r}; allowed: full, lora")
    return meta


class _StepLimit:
    """A stock consistency sampler that names the distilled schedule's step limit in its error (used by apply)."""

    distilled_meta: dict = {}  # the checkpoint's metadata (set by apply)

    def set_timesteps(self, num_inference_steps=None, *args, **kwargs):
        if num_inference_steps is not None:
            check_steps(self.distilled_meta or {"max_steps": self.config.get("original_inference_steps", 50)},
                        num_inference_steps)
        return super().set_timesteps(num_inference_steps, *args, **kwargs)


class DistilledLCMScheduler(_StepLimit, LCMScheduler):
    """LCMScheduler with the step limit."""


class DistilledFlowMatchLCMScheduler(_StepLimit, FlowMatchLCMScheduler):
    """FlowMatchLCMScheduler with the step limit."""


_DISTILLED = {LCMScheduler: DistilledLCMScheduler, FlowMatchLCMScheduler: DistilledFlowMatchLCMScheduler}


def check_steps(meta: dict, steps: int) -> None:
    limit = int(meta.get("max_steps", meta.get("original_inference_steps", 50)))
    if steps > limit:
        raise ValueError(f"steps: {steps} is above the distilled schedule's limit of this consistency checkpoint; "
                         f"allowed: 1 to {limit} (1–8 is the useful range)")


def check_variant(variant) -> None:
    """Steps of a Variant against its consistency checkpoint (call before building; nothing is loaded)."""
    cfg = variant.method("consistency")
    if cfg is not None:
        check_steps(read_meta(cfg.checkpoint), variant.steps)


def apply(pipe: DiffusionPipeline, config: ConsistencyConfig) -> None:
    """Load the student (full denoiser or fused LoRA) into ``pipe`` and set the LCMScheduler, in place."""
    kind = students_for(pipe)
    meta = read_meta(config.checkpoint)
    ckpt = Path(config.checkpoint)
    net = denoiser(pipe)
    if not same_base(meta["base_signature"], net):
        raise ValueError(f"consistency.checkpoint: {str(ckpt)!r} was distilled from base model "
                         f"{meta.get('base_model')!r}, not from this model "
                         f"{pipeline_info(pipe).source or '?'!r} (the {kind.folder} weights differ)")
    device, dtype = next(net.parameters()).device, net.dtype
    if meta["kind"] == "full":
        if not (ckpt / kind.folder / "config.json").is_file():
            raise ValueError(f"consistency.checkpoint: {str(ckpt)!r} has no {kind.folder}/ folder (incomplete "
                             "checkpoint)")
        with _naming(ckpt / kind.folder):
            student = kind.net_class.from_pretrained(ckpt / kind.folder, local_files_only=True, use_safetensors=True)
        set_denoiser(pipe, student.to(device=device, dtype=dtype))
    else:
        if not kind.lora_file(ckpt).is_file():
            raise ValueError(f"consistency.checkpoint: {str(ckpt)!r} has no {kind.lora_file(ckpt).name} "
                             "(incomplete checkpoint)")
        with _naming(kind.lora_file(ckpt)):
            kind.fuse_lora(pipe, ckpt, config.lora_scale)
    denoiser(pipe).eval().requires_grad_(False)
    stock = lcm_scheduler(pipe, int(meta["original_inference_steps"]))
    scheduler = _DISTILLED[type(stock)].from_config(stock.config)
    scheduler.distilled_meta = meta
    pipe.scheduler = scheduler
    info = pipeline_info(pipe)
    info.defaults = {**info.defaults, "steps": 4, "guidance": float(meta["guidance"])}  # a new dict: the base's stay
    info.consistency = meta


@contextmanager
def _naming(path: Path):
    """A student's weights that fail to load (truncated, corrupted, wrong shapes) → one ValueError naming them."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError, KeyError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"consistency.checkpoint: {str(path)!r} could not be loaded (truncated or corrupted "
                         f"weights?): {first}") from None


def save_full(pipe: DiffusionPipeline, student: torch.nn.Module, out: Path, meta: dict) -> None:
    """A stock pipeline folder with the student and the LCMScheduler (loads offline with from_pretrained) plus the
    metadata."""
    students_for(pipe).save_full(pipe, student, out, lcm_scheduler(pipe, int(meta["original_inference_steps"])))
    (out / META).write_text(json.dumps(meta, indent=2))


def save_lora(pipe: DiffusionPipeline, net: torch.nn.Module, out: Path, meta: dict, rank: int = 16) -> None:
    """The family's LoRA file(s), the LCMScheduler config and the metadata."""
    out.mkdir(parents=True, exist_ok=True)
    students_for(pipe).save_lora(pipe, net, out, rank)
    lcm_scheduler(pipe, int(meta["original_inference_steps"])).save_pretrained(out / "scheduler")
    (out / META).write_text(json.dumps(meta, indent=2))


def implied_settings(path: str) -> dict:
    """What a consistency student fixes in its Variant: the lcm scheduler, the guidance it samples with (its
    metadata's, the default its pipeline gets; a CFG scale on top of a distilled guidance ruins its images) and a
    step count it supports — the ``recommended_steps`` its metadata names (set when it was shipped, from its
    paired evaluation), else 4."""
    meta = read_meta(path)
    steps = int(meta.get("recommended_steps") or 4)
    return {"scheduler": "lcm", "steps": min(steps, int(meta.get("max_steps") or steps)),
            "guidance": float(meta["guidance"])}
