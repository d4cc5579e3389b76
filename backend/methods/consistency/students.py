"""What a consistency student is on each model family: the one place the family decides (registry ``families`` of
the consistency method lists exactly the families of :data:`STUDENTS`).

- U-Nets (sd1 / sd2 / sdxl / unet): a full student with a w-embedding (the U-Net's ``timestep_cond``), saved as a
  ``LatentConsistencyModelPipeline`` (SDXL: ``StableDiffusionXLPipeline`` + ``LCMScheduler``), or an LCM-LoRA for
  ``load_lora_weights``.
- PixArt (α / Σ): the transformer has no w-embedding input, so the CFG scale is baked into the student (as in
  PixArt-LCM, sampled with guidance off); saved as the family's own pipeline with the ``LCMScheduler`` (what
  PixArt-LCM ships), or a peft LoRA adapter on the attention and MLP projections (``transformer_lora/``, for
  ``peft.PeftModel.from_pretrained(transformer, DIR)``, as PixArt-LCM-LoRA ships).
- SD3 (flow matching): as PixArt, on the flow ODE: the schedule is the model's σ (z = (1 − σ)·x0 + σ·ε), the
  teacher predicts the velocity, the solver step is Euler, and the student's consistency function is its x0
  prediction — what diffusers' ``FlowMatchLCMScheduler`` samples with (saved in the pipeline folder).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchLCMScheduler,
    LCMScheduler,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)

from backend.methods.consistency.lcd import NoiseSchedule
from backend.models import denoiser, model_defaults, model_family, set_denoiser

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
PEFT_FOLDER = "transformer_lora"


def lcm_scheduler(pipe: DiffusionPipeline, original_inference_steps: int):
    """The stock consistency sampler of the family on the teacher's noise schedule and the distillation grid."""
    return students_for(pipe).lcm_scheduler(pipe, original_inference_steps)


class UNetStudents:
    """Consistency students of a U-Net."""

    folder = "unet"  # the student's folder in a full checkpoint
    net_class: type = UNet2DConditionModel
    w_embedding = True  # a full student takes the CFG scale as an input
    lora_teacher_is_student = True  # a LoRA student with its adapters disabled is the teacher (no second copy)
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                    "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")

    def latent_hw(self, pipe: DiffusionPipeline) -> tuple[int, int]:
        return (int(denoiser(pipe).config.sample_size),) * 2

    def prediction_type(self, pipe: DiffusionPipeline) -> str:
        return pipe.scheduler.config.get("prediction_type", "epsilon")

    def noise_schedule(self, pipe: DiffusionPipeline) -> NoiseSchedule:
        return NoiseSchedule.ddpm(DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod)

    def lcm_scheduler(self, pipe: DiffusionPipeline, original_inference_steps: int):
        return LCMScheduler.from_config(pipe.scheduler.config, original_inference_steps=original_inference_steps,
                                        timestep_scaling=10.0, clip_sample=False, set_alpha_to_one=True)

    def teacher_scheduler(self, pipe: DiffusionPipeline):
        """The sampler of teacher-sampled training latents."""
        return DDIMScheduler.from_config(pipe.scheduler.config)

    def full_student(self, teacher: torch.nn.Module, w_dim: int) -> torch.nn.Module:
        """The teacher with a zero w-projection added (starts exactly at the teacher)."""
        student = UNet2DConditionModel.from_config(teacher.config, time_cond_proj_dim=w_dim)
        missing, _ = student.load_state_dict(teacher.state_dict(), strict=False)
        assert all("cond_proj" in k for k in missing), missing
        with torch.no_grad():
            student.time_embedding.cond_proj.weight.zero_()
        return student.to(next(teacher.parameters()).device, teacher.dtype)

    def add_lora(self, student: torch.nn.Module, rank: int) -> None:
        student.add_adapter(self._lora_config(student, rank))

    def _lora_config(self, net: torch.nn.Module, rank: int):
        from peft import LoraConfig

        targets = [t for t in self.lora_targets if any(n.endswith(t) for n, _ in net.named_modules())]
        return LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, init_lora_weights="gaussian",
                          target_modules=targets)

    def save_full(self, pipe: DiffusionPipeline, student: torch.nn.Module, out: Path, scheduler) -> None:
        from diffusers import LatentConsistencyModelPipeline, StableDiffusionXLPipeline

        if isinstance(pipe, StableDiffusionXLPipeline):
            lcm = StableDiffusionXLPipeline(
                vae=pipe.vae, text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2,
                tokenizer=pipe.tokenizer, tokenizer_2=pipe.tokenizer_2, unet=student, scheduler=scheduler,
                force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt)
        else:
            lcm = LatentConsistencyModelPipeline(
                vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=student,
                scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        lcm.save_pretrained(out, safe_serialization=True)

    def save_lora(self, pipe: DiffusionPipeline, net: torch.nn.Module, out: Path, rank: int) -> None:
        """pytorch_lora_weights.safetensors in peft key format, which ``load_lora_weights`` reads."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
        from peft.utils import get_peft_model_state_dict

        layers = {k: v.detach().to("cpu", torch.float32).contiguous()
                  for k, v in get_peft_model_state_dict(net).items()}
        cls = StableDiffusionXLPipeline if isinstance(pipe, StableDiffusionXLPipeline) else StableDiffusionPipeline
        cls.save_lora_weights(str(out), unet_lora_layers=layers, weight_name=LORA_WEIGHTS, safe_serialization=True)

    def lora_file(self, ckpt: Path) -> Path:
        return ckpt / LORA_WEIGHTS

    def fuse_lora(self, pipe: DiffusionPipeline, ckpt: Path, scale: float) -> None:
        pipe.load_lora_weights(str(ckpt), weight_name=LORA_WEIGHTS, adapter_name="lcm", use_safetensors=True)
        pipe.fuse_lora(lora_scale=scale, components=["unet"])
        pipe.unload_lora_weights()


class PixArtStudents(UNetStudents):
    """Consistency students of a PixArt transformer (no w-embedding: the guidance is baked in)."""

    folder = "transformer"
    net_class = PixArtTransformer2DModel
    w_embedding = False
    lora_teacher_is_student = False  # peft-injected adapters: the frozen base is the teacher
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")

    def latent_hw(self, pipe: DiffusionPipeline) -> tuple[int, int]:
        """The model's default image size (its speedlab.json), else its native one, in latents."""
        defaults, net = model_defaults(pipe), denoiser(pipe)
        native = int(net.config.sample_size) * pipe.vae_scale_factor
        return tuple(int(defaults.get(k) or native) // pipe.vae_scale_factor for k in ("height", "width"))

    def full_student(self, teacher: torch.nn.Module, w_dim: int) -> torch.nn.Module:
        return copy.deepcopy(teacher)

    def add_lora(self, student: torch.nn.Module, rank: int) -> None:
        from peft import inject_adapter_in_model

        inject_adapter_in_model(self._lora_config(student, rank), student)

    def save_full(self, pipe: DiffusionPipeline, student: torch.nn.Module, out: Path, scheduler) -> None:
        parts = {k: v for k, v in pipe.components.items() if k not in ("transformer", "scheduler")}
        type(pipe)(**parts, transformer=student, scheduler=scheduler).save_pretrained(out, safe_serialization=True)

    def save_lora(self, pipe: DiffusionPipeline, net: torch.nn.Module, out: Path, rank: int) -> None:
        """A peft adapter folder (adapter_config.json + adapter_model.safetensors, peft's key format)."""
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        folder = out / PEFT_FOLDER
        self._lora_config(net, rank).save_pretrained(str(folder))
        save_file({f"base_model.model.{k}": v.detach().to("cpu", torch.float32).contiguous()
                   for k, v in get_peft_model_state_dict(net).items()}, folder / "adapter_model.safetensors")

    def lora_file(self, ckpt: Path) -> Path:
        return ckpt / PEFT_FOLDER / "adapter_model.safetensors"

    def fuse_lora(self, pipe: DiffusionPipeline, ckpt: Path, scale: float) -> None:
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer

        model = PeftModel.from_pretrained(denoiser(pipe), str(ckpt / PEFT_FOLDER))
        for layer in model.modules():
            if isinstance(layer, LoraLayer) and scale != 1.0:
                layer.scale_layer(scale)
        set_denoiser(pipe, model.merge_and_unload())


class SD3Students(PixArtStudents):
    """Consistency students of an SD3 transformer on the flow ODE (sampled by FlowMatchLCMScheduler)."""

    net_class = SD3Transformer2DModel

    def prediction_type(self, pipe: DiffusionPipeline) -> str:
        return "flow"

    def noise_schedule(self, pipe: DiffusionPipeline) -> NoiseSchedule:
        sched = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        return NoiseSchedule.flow(sched.sigmas.flip(0), int(sched.config.num_train_timesteps))

    def lcm_scheduler(self, pipe: DiffusionPipeline, original_inference_steps: int):
        return FlowMatchLCMScheduler.from_config(pipe.scheduler.config)

    def teacher_scheduler(self, pipe: DiffusionPipeline):
        return FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)


_UNET = UNetStudents()
STUDENTS: dict[str, UNetStudents] = {"sd1": _UNET, "sd2": _UNET, "sdxl": _UNET, "unet": _UNET,
                                     "pixart": PixArtStudents(), "sd3": SD3Students()}


def students_for(pipe: DiffusionPipeline) -> UNetStudents:
    """The student kind of the pipeline's family; ValueError with the consistency method's refusal otherwise."""
    family = model_family(pipe)
    if family not in STUDENTS:
        from backend.methods.registry import method

        raise ValueError(method("consistency").refusal(family) or f"consistency: no student for family {family!r}")
    return STUDENTS[family]
