"""The declared knobs that the workbench's forms are built from: method parameters, fine-tune settings and
their presets, model defaults, and the checkpoints shipped in ``assets/``."""

from __future__ import annotations

from dataclasses import dataclass

from backend.metadata import checkpoint_base_model
from backend.methods import registry
from backend.paths import ASSETS
from backend.runs.jobs import job_config_class
from backend.variant import method_config_class

MODELS = ("shapes", "shapes-dit", "tiny-arch", "sd15-arch", "tiny-pixart", "tiny-sd3", "tiny-flux", "pixart-arch")
PRESET_NAMES = ("1-minute demo", "quality")


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
    _, ft = registry.finetune(kind)
    values.update((registry.resolve(ft.presets) if ft.presets else {}).get(name, {}))
    return values


def asset_checkpoints(model: str | None, section: str | None = None) -> list[dict]:
    """The checkpoints shipped in ``assets/`` that exist, for that model (the one each was made from, as its
    metadata says) and section."""
    out = []
    for m in registry.methods():
        for label, folder in m.assets:
            path = ASSETS / folder
            if (section is None or m.section == section) and path.is_dir():
                base = checkpoint_base_model(path, m.section)
                if model is None or base == model:
                    out.append({"label": label, "section": m.section, "path": str(path), "model": base,
                                "kind": "assets"})
    return out


def checkpoint_implies(section: str, path: str) -> dict:
    """The settings a checkpoint fixes in its column, as its method's config declares them
    (``MethodConfig.checkpoint_implies``). {} for no checkpoint; ValueError for a bad one."""
    implies = method_config_class(section).checkpoint_implies
    return registry.resolve(implies)(path) if path and implies else {}


def locked_by_checkpoint(section: str) -> tuple[str, ...]:
    """The section's keys a checkpoint fixes (the form locks them while a checkpoint is chosen)."""
    return method_config_class(section).locked_by_checkpoint


def checkpoint_sets(section: str) -> tuple[str, ...]:
    """The Variant keys (scheduler, steps) a checkpoint of this section sets."""
    return method_config_class(section).checkpoint_sets


@dataclass(frozen=True)
class FamilyForm:
    """What a method form shows for one model family: the methods it refuses (section -> why), the knobs declared
    for other families only (section -> names, hidden) and the choices that do not run there
    (section -> knob -> {choice: why}, left out of the choice lists)."""

    family: str
    refused: dict[str, str]
    hidden: dict[str, tuple[str, ...]]
    choices_refused: dict[str, dict[str, dict]]

    def allowed_choices(self, section: str, param: dict) -> list:
        """The declared choices of ``param`` that run on this family."""
        refused = self.choices_refused.get(section, {}).get(param["name"], {})
        return [c for c in param.get("choices") or () if c not in refused]

    def choice_note(self, section: str, name: str) -> str:
        """One line naming the choices this family refuses and why ("" when none)."""
        refused = self.choices_refused.get(section, {}).get(name, {})
        return "; ".join(f"not {c} on {self.family}: {why}" for c, why in refused.items())


def family_form(family: str) -> FamilyForm:
    """The method forms' restrictions for a model family, from the registry and the methods' declarations."""
    refused, hidden, choices = {}, {}, {}
    for m in registry.methods():
        if reason := m.refusal(family):
            refused[m.section] = reason
        config = m.config_class()
        names = tuple(p["name"] for p in method_params(m.section)
                      if p.get("families") and family not in p["families"])
        if names:
            hidden[m.section] = names
        if by_knob := config.refused_choices(family):
            choices[m.section] = by_knob
    return FamilyForm(family, refused, hidden, choices)


def model_form(model: str) -> FamilyForm:
    """:func:`family_form` of the model's family (ModelError when the model cannot be loaded)."""
    from backend.models import load_pipeline, model_family

    return family_form(model_family(load_pipeline(model)))
