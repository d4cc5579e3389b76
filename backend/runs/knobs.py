"""The declared knobs that the workbench's forms are built from: method parameters, fine-tune settings and
their presets, model defaults, and the checkpoints shipped in ``assets/``."""

from __future__ import annotations

from pathlib import Path

from backend.methods import registry
from backend.runs.jobs import job_config_class
from backend.variant import method_config_class

MODELS = ("shapes", "tiny-arch", "sd15-arch", "tiny-pixart", "tiny-sd3", "tiny-flux", "pixart-arch")
ASSETS = Path(__file__).resolve().parents[2] / "assets"
# Checkpoints shipped with the repository (made by the commands in their COMMAND.md): (label, section, folder).
ASSET_CHECKPOINTS = (
    ("EfficientDM W4A4 (assets)", "quant", "efficientdm-w4a4"),
    ("RG-LCM 4-step LoRA (assets)", "consistency", "rg-lcm-lora"),
)
PRESET_NAMES = ("1-minute demo", "quality")
PRESETS: dict[tuple[str, str], dict] = {
    ("efficientdm", "1-minute demo"): {"weight_bits": 4, "act_bits": 8, "minutes": 0.6, "train_steps": 5,
                                       "batch_size": 2, "lora_rank": 8, "checkpoint_every_s": 30.0},
    ("efficientdm", "quality"): {"weight_bits": 4, "act_bits": 8, "minutes": 15.0},
    ("lcd", "1-minute demo"): {"minutes": 0.6, "batch_size": 8, "data_pool": 64, "beta": 0.0,
                               "checkpoint_every_s": 30.0},
    ("lcd", "quality"): {"minutes": 10.0, "beta": 0.0},
    ("rg-lcd", "1-minute demo"): {"minutes": 0.6, "batch_size": 8, "data_pool": 64, "reward": "shapes",
                                  "beta": 1.0, "checkpoint_every_s": 30.0},
    ("rg-lcd", "quality"): {"minutes": 10.0, "reward": "shapes", "beta": 1.0},
}


def method_params(section: str) -> list[dict]:
    """The UI-visible declared parameters of a Variant method section (describe() with ui=True)."""
    return [p for p in method_config_class(section).describe() if p.get("ui", True)]


def all_method_params() -> dict[str, list[dict]]:
    """Every registered method section's UI-visible parameters, in application order."""
    return {section: method_params(section) for section in registry.sections()}


def method_titles() -> dict[str, str]:
    """Each method section's UI title."""
    return {m.section: m.title for m in registry.methods()}


def finetune_kinds() -> list[str]:
    """The registered fine-tune kinds (the workbench's Fine-tune tab offers these)."""
    return list(registry.finetunes())


def finetune_forms() -> dict[str, str]:
    """Fine-tune kind -> the kind whose settings form it uses (kinds with one settings class share a form)."""
    first: dict[type, str] = {}
    return {kind: first.setdefault(registry.resolve(ft.config), kind)
            for kind, (_, ft) in registry.finetunes().items()}


def model_defaults_for(model: str) -> dict:
    """steps / guidance / height / width the model ships; ModelError when it cannot be loaded."""
    from backend.models import load_pipeline, model_defaults

    return dict(model_defaults(load_pipeline(model)))


def job_params(kind: str) -> list[dict]:
    """The declared settings of a fine-tune kind (the advanced-settings form)."""
    return [p for p in job_config_class(kind).describe() if p.get("ui", True)]


def preset(kind: str, name: str) -> dict:
    """Every setting of ``kind`` with the preset's values over the defaults."""
    registry.finetune(kind)  # ValueError naming the allowed kinds
    if name not in PRESET_NAMES:
        raise ValueError(f"preset {name!r} is not allowed; allowed: {', '.join(PRESET_NAMES)}")
    values = {p["name"]: p["default"] for p in job_params(kind)}
    values.update(PRESETS.get((kind, name), {}))
    return values


def asset_checkpoints(model: str | None, section: str | None = None) -> list[dict]:
    """The shipped checkpoints (all made from ``shapes``) that exist, for that model and section."""
    if model is not None and model != "shapes":
        return []
    return [{"label": label, "section": s, "path": str(ASSETS / folder), "model": "shapes", "kind": "assets"}
            for label, s, folder in ASSET_CHECKPOINTS
            if (section is None or s == section) and (ASSETS / folder).is_dir()]


def checkpoint_implies(section: str, path: str) -> dict:
    """The settings a checkpoint fixes in its column: a quant checkpoint's method and bits, a consistency
    student's scheduler (lcm) and a step count it supports. {} for no checkpoint; ValueError for a bad one."""
    if not path:
        return {}
    if section == "quant":
        from backend.methods.quant.checkpoint import read_meta

        cfg = read_meta(path).get("config", {})
        return {"quant": {k: cfg[k] for k in ("method", "weight_bits", "act_bits") if k in cfg}}
    if section == "consistency":
        from backend.methods.consistency.model import read_meta

        meta = read_meta(path)
        return {"scheduler": "lcm", "steps": min(4, int(meta.get("max_steps") or 4))}
    return {}


def family_refusals(model: str) -> dict[str, str]:
    """Method section -> the one line saying why it does not apply to ``model``'s family (what a form shows beside
    a disabled method); empty when every method applies."""
    from backend.models import load_pipeline, model_family

    family = model_family(load_pipeline(model))
    return {m.section: reason for m in registry.methods() if (reason := m.refusal(family))}
