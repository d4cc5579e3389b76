"""Knobs of the consistency method: the Variant section (inference) and the distillation settings (training)."""

from __future__ import annotations

import dataclasses

from backend.methods.params import MAX_SEED, MethodConfig, param

REWARDS = ("none", "shapes", "hpsv2", "imagereward", "pickscore", "clip")
LOSSES = ("huber", "l2")


@dataclasses.dataclass
class ConsistencyConfig(MethodConfig):
    """Variant section ``"consistency": {"checkpoint": DIR}``: an LCD / RG-LCD student or an LCM-LoRA."""

    section = "consistency"
    checkpoint_sets = ("scheduler", "steps")
    checkpoint_implies = "backend.methods.consistency.model:implied_settings"

    checkpoint: str = param("", "folder written by `python -m backend finetune lcd` (a full student or an LCM-LoRA)")
    lora_scale: float = param(1.0, "strength of an LCM-LoRA when it is fused into the U-Net", minimum=0.0, maximum=2.0)

    def validate(self) -> None:
        if not isinstance(self.checkpoint, str) or not self.checkpoint.strip():
            raise ValueError("consistency.checkpoint: a folder written by `python -m backend finetune lcd` is required")

    def label(self) -> str:
        """"LCM rg-lcm-lora" (the student's folder name), with a LoRA scale other than 1."""
        name = self.checkpoint.rstrip("/").split("/")[-1] or "student"
        return f"LCM {name}" + (f" ×{self.lora_scale:g}" if self.lora_scale != 1.0 else "")

    def check_variant(self, variant) -> None:
        if variant.scheduler not in (None, "lcm"):
            raise ValueError(f"consistency and scheduler {variant.scheduler!r} are incompatible: a consistency "
                             "student samples with the lcm scheduler (omit scheduler or use \"lcm\")")


@dataclasses.dataclass
class DistillConfig(MethodConfig):
    """Latent consistency distillation (LCD / LCM-LoRA) and its reward guidance (RG-LCD)."""

    section = "lcd"

    lora: bool = param(False, "LCM-LoRA: peft LoRA on the teacher, no w-embedding, no EMA target")
    lora_rank: int = param(16, "LoRA rank (LCM-LoRA)", minimum=1, maximum=256)
    reward: str = param("none", "reward model whose score of the single-step prediction is maximised", choices=REWARDS)
    beta: float = param(1.0, "reward weight: loss = distill − β·reward (β ≥ 0)")
    proxy: bool = param(False, "optimise a latent proxy reward model trained online on the expert's preferences")
    minutes: float = param(10.0, "wall-clock training budget (minutes)", minimum=0.0, maximum=10_000.0)
    max_steps: int = param(0, "stop after this many steps (0: only the time budget)", minimum=0)
    batch_size: int = param(24, "latents per step", minimum=1, maximum=1024)
    lr: float = param(1e-4, "AdamW learning rate of the student (LoRA: ×10)", minimum=0.0, maximum=1.0)
    lr_decay: bool = param(False, "decay the lr linearly to 0 over the budget (minutes or max_steps), so the "
                           "student saved at the end is not one noisy step of a constant-lr run (LCD script: "
                           "constant)")
    num_ddim_timesteps: int = param(50, "DDIM solver grid size N (skipping step k = 1000 / N)", minimum=2, maximum=1000)
    w_min: float = param(-1.0, "lowest CFG scale w sampled (LCM form; <0: teacher's guidance − 1 − 2)", minimum=-1.0)
    w_max: float = param(-1.0, "highest CFG scale w sampled (LCM form; <0: teacher's guidance − 1 + 2)", minimum=-1.0)
    ema_decay: float = param(0.95, "EMA rate of the target network (full student)", minimum=0.0, maximum=1.0)
    loss: str = param("huber", "distillation loss", choices=LOSSES)
    huber_c: float = param(0.001, "Huber constant c", minimum=0.0)
    time_cond_proj_dim: int = param(256, "size of the student's w-embedding", minimum=8, maximum=2048)
    data: str = param("auto", "training latents: auto | shapes[:train|two|hard] | teacher[:PROMPTS.txt] | a folder "
                       "of images with .txt captions")
    data_pool: int = param(2048, "encoded Shapes latents kept and re-used (0: fresh renders every step)", minimum=0)
    proxy_lr: float = param(1e-3, "AdamW learning rate of the latent proxy reward model", minimum=0.0, maximum=1.0)
    proxy_batch: int = param(8, "items per proxy update (three latents each: student, target, real)", minimum=1)
    proxy_warmup: int = param(30, "steps the proxy trains before the student follows it", minimum=0)
    checkpoint_every_s: float = param(120.0, "seconds between training checkpoints", minimum=1.0)
    seed: int = param(0, "random seed", minimum=0, maximum=MAX_SEED)

    def validate(self) -> None:
        if self.beta < 0:
            raise ValueError(f"beta: {self.beta} is not allowed; the reward weight must be ≥ 0")
        if self.proxy and self.reward == "none":
            raise ValueError("proxy: the latent proxy needs an expert reward; give reward (allowed: "
                             f"{', '.join(REWARDS[1:])})")
        if self.w_min >= 0 and self.w_max >= 0 and self.w_min > self.w_max:
            raise ValueError(f"w_min {self.w_min} is above w_max {self.w_max}")


def curve_label(cfg: dict) -> str:
    """The line of the per-method curves a consistency section belongs to (its checkpoint's folder name)."""
    name = str(cfg.get("checkpoint", "")).rstrip("/").split("/")[-1] or "student"
    return f"LCM steps ({name})"


# The workbench's fine-tune presets (the registry's FineTune.presets): preset name -> settings over the defaults.
LCD_PRESETS = {
    "1-minute demo": {"minutes": 0.6, "batch_size": 8, "data_pool": 64, "beta": 0.0, "checkpoint_every_s": 30.0},
    "quality": {"minutes": 10.0, "beta": 0.0},
}
RG_LCD_PRESETS = {
    "1-minute demo": {"minutes": 0.6, "batch_size": 8, "data_pool": 64, "reward": "shapes", "beta": 1.0,
                      "checkpoint_every_s": 30.0},
    "quality": {"minutes": 10.0, "reward": "shapes", "beta": 1.0},
}
