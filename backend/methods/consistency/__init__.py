"""Latent consistency distillation (LCD, LCM-LoRA) and its reward-guided form (RG-LCD).

``apply(pipe, ConsistencyConfig(checkpoint=DIR))`` loads a distilled student into a pipeline and sets the
stock ``LCMScheduler`` (``FlowMatchLCMScheduler`` on SD3; what a student is per family: ``students``);
``backend.methods.consistency.distill`` trains one; ``cli`` is ``finetune lcd``.
"""

from backend.methods.consistency.config import ConsistencyConfig, DistillConfig
from backend.methods.consistency.model import apply, check_steps, check_variant, read_meta

__all__ = ["ConsistencyConfig", "DistillConfig", "apply", "check_steps", "check_variant", "read_meta"]
