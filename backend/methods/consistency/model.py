"""Loading a distilled student into a pipeline (apply), saving students, and checking they fit the base model.

A checkpoint folder holds ``backend.metadata.CONSISTENCY_META_FILE`` (kind, base model signature, distilled schedule)
and either a whole pipeline with the student U-Net (full student with a w-embedding: a
``LatentConsistencyModelPipeline``, or for SDXL, which has no LCM pipeline class, a ``StableDiffusionXLPipeline``
with the ``LCMScheduler``, as the published LCM-SDXL models are) or an LCM-LoRA
(``pytorch_lora_weights.safetensors`` for ``load_lora_weights``) plus the ``LCMScheduler`` config.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, LCMScheduler, UNet2DConditionModel
from safetensors import SafetensorError

from backend.metadata import CONSISTENCY_META_FILE, pipeline_info
from backend.methods.consistency.config import ConsistencyConfig

META = CONSISTENCY_META_FILE
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
ARCH_KEYS = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "cross_attention_dim",
             "down_block_types", "up_block_types", "attention_head_dim", "sample_size")
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]


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


def lcm_scheduler(pipe: DiffusionPipeline, original_inference_steps: int) -> LCMScheduler:
    """The stock LCMScheduler on the teacher's noise schedule and the distillation grid."""
    return LCMScheduler.from_config(pipe.scheduler.config, original_inference_steps=original_inference_steps,
                                    timestep_scaling=10.0, clip_sample=False, set_alpha_to_one=True)


class DistilledLCMScheduler(LCMScheduler):
    """The stock LCMScheduler that names the distilled schedule's step limit in its error (used by apply)."""

    distilled_meta: dict = {}  # the checkpoint's metadata (set by apply)

    def set_timesteps(self, num_inference_steps=None, *args, **kwargs):
        if num_inference_steps is not None:
            check_steps(self.distilled_meta or {"max_steps": self.config.original_inference_steps}, num_inference_steps)
        return super().set_timesteps(num_inference_steps, *args, **kwargs)


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
    """Load the student (full U-Net or fused LCM-LoRA) into ``pipe`` and set the LCMScheduler, in place."""
    meta = read_meta(config.checkpoint)
    ckpt = Path(config.checkpoint)
    if not same_base(meta["base_signature"], pipe.unet):
        raise ValueError(f"consistency.checkpoint: {str(ckpt)!r} was distilled from base model "
                         f"{meta.get('base_model')!r}, not from this model "
                         f"{pipeline_info(pipe).source or '?'!r} (the U-Net weights differ)")
    device, dtype = pipe.unet.device, pipe.unet.dtype
    if meta["kind"] == "full":
        if not (ckpt / "unet" / "config.json").is_file():
            raise ValueError(f"consistency.checkpoint: {str(ckpt)!r} has no unet/ folder (incomplete checkpoint)")
        with _naming(ckpt / "unet"):
            student = UNet2DConditionModel.from_pretrained(ckpt / "unet", local_files_only=True, use_safetensors=True)
        pipe.unet = student.to(device=device, dtype=dtype).eval().requires_grad_(False)
    else:
        if not (ckpt / LORA_WEIGHTS).is_file():
            raise ValueError(f"consistency.checkpoint: {str(ckpt)!r} has no {LORA_WEIGHTS} (incomplete checkpoint)")
        with _naming(ckpt / LORA_WEIGHTS):
            pipe.load_lora_weights(str(ckpt), weight_name=LORA_WEIGHTS, adapter_name="lcm", use_safetensors=True)
        pipe.fuse_lora(lora_scale=config.lora_scale, components=["unet"])
        pipe.unload_lora_weights()
        pipe.unet.eval().requires_grad_(False)
    scheduler = DistilledLCMScheduler.from_config(lcm_scheduler(pipe, int(meta["original_inference_steps"])).config)
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
    """A stock pipeline folder with the student (loads offline with from_pretrained) plus the metadata:
    LatentConsistencyModelPipeline, or StableDiffusionXLPipeline + LCMScheduler for SDXL."""
    from diffusers import LatentConsistencyModelPipeline, StableDiffusionXLPipeline

    scheduler = lcm_scheduler(pipe, int(meta["original_inference_steps"]))
    if isinstance(pipe, StableDiffusionXLPipeline):
        lcm = StableDiffusionXLPipeline(
            vae=pipe.vae, text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2,
            tokenizer=pipe.tokenizer, tokenizer_2=pipe.tokenizer_2, unet=student, scheduler=scheduler,
            force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt,
        )
    else:
        lcm = LatentConsistencyModelPipeline(
            vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=student,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    lcm.save_pretrained(out, safe_serialization=True)
    (out / META).write_text(json.dumps(meta, indent=2))


def save_lora(pipe: DiffusionPipeline, unet: torch.nn.Module, out: Path, meta: dict) -> None:
    """pytorch_lora_weights.safetensors (for load_lora_weights), the LCMScheduler config and the metadata."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from peft.utils import get_peft_model_state_dict

    out.mkdir(parents=True, exist_ok=True)
    layers = get_peft_model_state_dict(unet)  # peft key format, which load_lora_weights reads
    layers = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in layers.items()}
    cls = StableDiffusionXLPipeline if isinstance(pipe, StableDiffusionXLPipeline) else StableDiffusionPipeline
    cls.save_lora_weights(str(out), unet_lora_layers=layers, weight_name=LORA_WEIGHTS, safe_serialization=True)
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
