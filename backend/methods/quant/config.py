"""Knobs of low-bit quantization (the Variant's "quant" section) and of EfficientDM / QAT fine-tuning.

Layer policy (what gets quantized, following EfficientDM's choices unless stated):
- every ``nn.Conv2d`` / ``nn.Linear`` of the U-Net is wrapped: ResNet convs and time projections,
  transformer proj_in/proj_out, attention to_q/to_k/to_v/to_out, feed-forward linears, upsample convs;
  weights per output channel (asymmetric min/max below 8 bits; symmetric at 8 bits by default, the
  signed int8 that integer kernels take), input activations per tensor (asymmetric, MSE-searched
  range), outputs stay FP;
- the first conv, the last conv and the time-embedding MLP run at W8A8, with no LoRA and frozen;
- skip (``conv_shortcut``) and downsample convs: the paper keeps them FP; we default to W8A8, which
  costs nothing measurable in quality and lets the packed 4-bit checkpoint reach 1/6 of fp32 size;
- the attention matmuls (QKᵀ and softmax·V) stay FP unless ``quantize_attn_matmul``;
- GroupNorm / LayerNorm, SiLU, softmax, the text encoder and the VAE stay FP.

``kernels`` picks how the quantized layers run: simulated (fake quantization, the default) or real
integer kernels (:mod:`backend.methods.quant.kernels`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from backend.methods.params import MAX_SEED, MethodConfig, param

METHODS = ("ptq", "efficientdm", "qat")
SIDE_POLICIES = ("fp", "w8a8", "same")
LAYER_POLICY_KEYS = ("quantize_skip", "quantize_downsample", "first_last_8bit", "quantize_attn_matmul")


@dataclass
class QuantConfig(MethodConfig):
    """Fake-quantized U-Net: PTQ directly, or a checkpoint made by EfficientDM / full-QAT fine-tuning."""

    section: ClassVar[str] = "quant"
    locked_by_checkpoint: ClassVar[tuple[str, ...]] = ("method", "weight_bits", "act_bits")

    checkpoint_implies: ClassVar[str] = "backend.methods.quant.checkpoint:implied_settings"

    method: str = param("ptq", "ptq: calibrate and run (no training); efficientdm / qat: a fine-tuned checkpoint, "
                        "made by `python -m backend finetune efficientdm` (give it as checkpoint)", choices=METHODS)
    weight_bits: int = param(8, "weight bit-width (per output channel, asymmetric)", minimum=2, maximum=8)
    act_bits: int = param(8, "input-activation bit-width (per tensor, asymmetric)", minimum=2, maximum=8)
    checkpoint: str = param("", "a quantized checkpoint directory (quant_config.json + quant_model.safetensors); "
                            "when given, it is loaded and its own method / bits / policy are used")
    quantize_skip: str = param("w8a8", "ResNet 1x1 skip convs: fp (paper), w8a8, or same (the target bits)",
                               choices=SIDE_POLICIES)
    quantize_downsample: str = param("w8a8", "downsample convs: fp (paper), w8a8, or same (the target bits)",
                                     choices=SIDE_POLICIES)
    first_last_8bit: bool = param(True, "keep the first conv, last conv and time-embedding MLP at W8A8, "
                                  "without LoRA (paper); false quantizes them at the target bits")
    symmetric_8bit_weights: bool = param(True, "8-bit weights symmetric per channel (signed int8 codes, which int8 "
                                         "kernels run exactly); false: asymmetric min/max as at lower bits")
    quantize_attn_matmul: bool = param(False, "also fake-quantize the inputs of QKᵀ and softmax·V at act_bits "
                                       "(paper: off)")
    kernels: str = param("simulated", "simulated: fake quantization in fp32 (any bits, any device); real: int8 "
                         "oneDNN kernels on the CPU (bits below 8 run exactly on the int8 kernels; on CPUs without "
                         "VNNI, W8A8 layers take 7-bit activations (reduce_range); where a device has none, the run "
                         "falls back to simulated and says so)", choices=("simulated", "real"))
    calib_prompts: int = param(8, "PTQ: prompts sampled by the FP model to collect calibration inputs",
                               minimum=1, maximum=256, ui=False)
    calib_steps: int = param(20, "PTQ: DDIM steps of the FP calibration trajectories", minimum=1, maximum=1000,
                             ui=False)
    calib_samples: int = param(32, "PTQ: U-Net inputs (x_t, t, text) drawn from the trajectories for the "
                               "activation-range search (paper: 32)", minimum=1, maximum=4096, ui=False)
    seed: int = param(0, "seed of the calibration prompts and noise", minimum=0, maximum=MAX_SEED, ui=False)
    mixed: dict = param({}, "mixed precision (PTQ): {\"budget_mb\": X} raises the layers the sensitivity map finds "
                        "most sensitive to W8A8 while the packed U-Net stays within X MiB (the rest at the target "
                        "bits); see backend/methods/quant/mixed.py", ui=False)

    def validate(self) -> None:
        if not isinstance(self.checkpoint, str):
            raise ValueError(f"quant.checkpoint: expected a directory path (string), got {self.checkpoint!r}")
        if not isinstance(self.mixed, dict):
            raise ValueError(f"quant.mixed: expected an object such as {{\"budget_mb\": 1.5}}, got {self.mixed!r}")
        if self.mixed:
            budget = self.mixed.get("budget_mb")
            if set(self.mixed) != {"budget_mb"} or isinstance(budget, bool) or not isinstance(budget, (int, float)) \
                    or not budget > 0:
                raise ValueError(f"quant.mixed: {self.mixed!r} is not allowed; allowed: {{\"budget_mb\": X}} with X "
                                 "a packed U-Net size in MiB > 0")
            if self.checkpoint or self.method != "ptq":
                raise ValueError("quant.mixed: applies to PTQ only; a checkpoint carries its own per-layer bits "
                                 "(leave out quant.mixed or quant.checkpoint)")
        if self.method != "ptq" and not self.checkpoint:
            raise ValueError(f"quant.method: {self.method!r} needs a checkpoint (make one with `python -m backend "
                             f"finetune efficientdm --out DIR`, then give quant.checkpoint: DIR); allowed without "
                             "one: ptq")

    def label(self) -> str:
        """"EfficientDM W4A4", "PTQ W8A8", "PTQ mixed 1.5 MiB" (the bits a checkpoint fixes are its own)."""
        name = {"efficientdm": "EfficientDM"}.get(self.method, self.method.upper())
        if self.mixed:
            return f"{name} mixed {self.mixed['budget_mb']:g} MiB"
        return f"{name} W{self.weight_bits}A{self.act_bits}" + (" int8 kernels" if self.kernels == "real" else "")


@dataclass
class FinetuneConfig(MethodConfig):
    """EfficientDM (QALoRA + TALSQ + data-free distillation) and full-QAT fine-tuning hyper-parameters.

    Defaults are sized for a 2-core CPU and the embedded shapes-sd: short DDIM trajectories (train_steps
    per-step activation scales, resampled by timestep when sampling with more steps), small batches,
    and a LoRA learning-rate scale larger than the paper's 1/2500 because we run ~10× fewer iterations.
    """

    section: ClassVar[str] = "quant_finetune"

    method: str = param("efficientdm", "efficientdm: QALoRA + TALSQ (LoRA merged into W before fake quantization); "
                        "qat: LSQ on all weights, no LoRA (the baseline)", choices=("efficientdm", "qat"))
    weight_bits: int = param(4, "weight bit-width", minimum=2, maximum=8)
    act_bits: int = param(4, "activation bit-width", minimum=2, maximum=8)
    minutes: float = param(15.0, "wall-clock training budget", minimum=0.0, maximum=10_000.0)
    max_iters: int = param(0, "stop after this many updates (0: budget only)", minimum=0)
    train_steps: int = param(10, "DDIM steps of each teacher trajectory = per-step activation scales (TALSQ T; "
                             "paper: 100). Sampling with another step count maps each timestep to the nearest",
                             minimum=1, maximum=1000)
    batch_size: int = param(4, "prompts per trajectory (the U-Net sees 2× with classifier-free guidance; paper: 2)",
                            minimum=1, maximum=256)
    lora_rank: int = param(32, "QALoRA rank r in every quantized layer (paper: 32; capped at the layer's size)",
                           minimum=1, maximum=1024)
    lora_lr_scale: float = param(0.02, "scale-aware LoRA lr: each layer's Adam lr = this × mean weight step size "
                                 "(paper code: 1/2500 over 16k iterations; on shapes-sd W2A8, 5 min: 0.02 recovered "
                                 "79% of PTQ's accuracy drop, 0.08 destroyed the model, see docs/readings/"
                                 "bench-quant.md)", minimum=0.0)
    weight_scale_lr: float = param(1e-6, "lr of the LSQ weight step sizes (paper: 1e-6)", minimum=0.0)
    act_lr: float = param(0.01, "relative lr of the per-step activation step sizes: each quantizer's Adam lr = "
                          "this × its mean step size (zero points: this, in integer codes). An absolute lr (paper: "
                          "5e-4) moves 8-bit step sizes by tens of percent a step", minimum=0.0)
    qat_lr: float = param(1e-4, "qat only: Adam lr of the latent full-precision weights (on shapes-sd W4A4, 1e-3 "
                          "wrecked the PTQ start: accuracy ≤ 0.16 and PSNR 18-19 dB for 10 min; 1e-4 held 34 dB "
                          "from the first 1.5 min, see docs/bench-quant.md)", minimum=0.0)
    train_first_last: bool = param(True, "train conv_in, conv_out and the time embedding when the layer policy puts "
                                   "them at the target bits (the paper keeps them at W8A8, untrained). Off: they keep "
                                   "their PTQ weights and step sizes; on shapes-sd W3A4 with every layer at the "
                                   "target bits that held the accuracy that training them lost (docs/readings/"
                                   "bench-quant.md)")
    guidance: float = param(-1.0, "CFG scale of the teacher trajectory (<0: the model's default)")
    distill_target: str = param("guided", "guided: MSE of the CFG-combined noise predictions (paper); branches: "
                                "MSE of the unconditional and conditional predictions separately (keeps the guidance "
                                "direction; see docs/readings/bench-quant.md)", choices=("guided", "branches"))
    eta: float = param(1.0, "DDIM eta of the teacher trajectory (paper: 1.0)", minimum=0.0, maximum=1.0)
    grad_clip: float = param(1.0, "gradient-norm clip (0: off)", minimum=0.0)
    checkpoint_every_s: float = param(120.0, "seconds of training between checkpoints", minimum=1.0)
    seed: int = param(0, "seed of prompts and trajectories", minimum=0, maximum=MAX_SEED)

    def quant_config(self, **overrides) -> QuantConfig:
        """The QuantConfig of the student (layer policy at its defaults unless overridden)."""
        data = {"method": "ptq", "weight_bits": self.weight_bits, "act_bits": self.act_bits, **overrides}
        return QuantConfig.from_dict(data)


def curve_label(cfg: dict) -> str:
    """The line of the per-method curves a quant section belongs to (method and activation bits, or checkpoint)."""
    if cfg.get("checkpoint"):
        return f"quant checkpoint ({cfg.get('method', 'ptq')})"
    return f"{cfg.get('method', 'ptq').upper()} bits (A{cfg.get('act_bits', 8)})"


# The workbench's fine-tune presets (the registry's FineTune.presets): preset name -> settings over the defaults.
FINETUNE_PRESETS = {
    "1-minute demo": {"weight_bits": 4, "act_bits": 8, "minutes": 0.6, "train_steps": 5, "batch_size": 2,
                      "lora_rank": 8, "checkpoint_every_s": 30.0},
    "quality": {"weight_bits": 4, "act_bits": 8, "minutes": 15.0},
}
