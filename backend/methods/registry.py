"""The one place a method is registered: its Variant section, config class, how it is applied (order, U-Net
access), its fine-tunes (CLI sub-command and workbench job kinds), its curve in the plots and its section in the
UI. The Variant parser, the pipeline build, the CLI, the workbench and the plots all read this table, so a new
method is its own package plus one :func:`register` call below.

References are ``"module:attribute"`` strings (imported when first used, so registering costs nothing) or the
objects themselves.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

UNET_ACCESS = ("copy", "own", "hooks")


@dataclass(frozen=True)
class FineTune:
    """A fine-tune that makes a checkpoint for its method's section."""

    kind: str  # workbench job kind (and CLI sub-command, when ``cli`` is set)
    config: Any  # its settings class (a MethodConfig), or "module:Class"
    cli: str | None = None  # module with add_arguments(parser) / main(args) for ``finetune KIND`` (None: shares one)
    train: Any = None  # train(pipe, config, out, job=JobControl, [on_eval=, eval_every_s=]) -> summary, or "module:fn"
    watch: Any = None  # watch(pipe, config, sample) -> an on_eval judge with ``observe`` and ``every_s``, or None
    presets: Any = None  # {preset name: settings} the workbench offers (see runs.knobs.PRESET_NAMES), or "module:NAME"


@dataclass(frozen=True)
class Method:
    """One method: everything the rest of Speedlab needs to know about it."""

    section: str  # its Variant key; the section is off when absent
    title: str  # UI section title
    config: Any  # its MethodConfig class, or "module:Class"
    apply: Any  # apply(pipe, config) -> None, or "module:function"
    order: int  # application order, low first: weights replaced, then layers wrapped, then hooks from outside
    unet_access: str  # when first applied: "copy" (writes weights: a deep copy), "own" (``private_unet``), "hooks"
    private_unet: Any = None  # private_unet(unet, config) -> U-Net, for unet_access "own"
    curve: str = ""  # its family of curves in the plots (Curves tab, reports)
    curve_knob: str = ""  # the key on a curve's x axis: a key of the section, or a Variant key ("steps")
    curve_axis: str = ""  # that axis' title
    curve_label: Any = None  # label(section dict) -> the line a variant belongs to, or "module:function"
    finetunes: tuple[FineTune, ...] = ()
    conflicts: dict[str, str] = field(default_factory=dict)  # section it does not stack with -> why (both ways)
    assets: tuple[tuple[str, str], ...] = ()  # checkpoints shipped in assets/: (label, folder); its model: its metadata
    families: tuple[str, ...] = ()  # the model families it applies to (backend.models.FAMILIES); () = every family
    families_why: str = ""  # why the others are left out (the refusal and the UI say it)
    searched: bool = True  # in the stack search's default space (False: only when --space names it; say why in help)

    def refusal(self, family: str) -> str | None:
        """One line saying why the method does not apply to a model of ``family``, or None when it does."""
        if not self.families or family in self.families:
            return None
        why = f" ({self.families_why})" if self.families_why else ""
        return (f"{self.section}: does not apply to a model of family {family!r}{why}; allowed families: "
                f"{', '.join(self.families)}")

    def __post_init__(self) -> None:
        if self.unet_access not in UNET_ACCESS:
            raise ValueError(f"method {self.section!r}: unet_access {self.unet_access!r}; allowed: "
                             f"{', '.join(UNET_ACCESS)}")
        if self.unet_access == "own" and self.private_unet is None:
            raise ValueError(f"method {self.section!r}: unet_access 'own' needs private_unet")

    def config_class(self) -> type:
        return resolve(self.config)

    def apply_to(self, pipe: Any, config: Any) -> None:
        resolve(self.apply)(pipe, config)


_METHODS: dict[str, Method] = {}


def resolve(ref: Any) -> Any:
    """A ``"module:attribute"`` reference imported (an import error is a bug, not a missing method)."""
    if not isinstance(ref, str):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def register(method: Method) -> Method:
    """Add a method (ValueError when its section or a fine-tune kind is taken)."""
    if method.section in _METHODS:
        raise ValueError(f"method section {method.section!r} is registered already")
    taken = set(finetunes())
    for ft in method.finetunes:
        if ft.kind in taken:
            raise ValueError(f"fine-tune kind {ft.kind!r} is registered already")
    _METHODS[method.section] = method
    return method


def unregister(section: str) -> None:
    """Remove a method (for tests that register a toy one)."""
    _METHODS.pop(section, None)


def methods() -> list[Method]:
    """Every registered method, in the order they were registered (the order forms and tables show them)."""
    return list(_METHODS.values())


def sections() -> list[str]:
    return [m.section for m in methods()]


def application_order(sections_on: list[str]) -> list[str]:
    """Method sections in the order they are applied to a pipeline (each method's ``order``, low first)."""
    return sorted(sections_on, key=lambda s: method(s).order)


def method(section: str) -> Method:
    if section not in _METHODS:
        raise ValueError(f"method {section!r} is not allowed; allowed: {', '.join(sections())}")
    return _METHODS[section]


def check_stack(sections_on: list[str]) -> None:
    """ValueError naming the first two sections that do not stack (either method's ``conflicts`` names the other)."""
    for a in sections_on:
        for b in sections_on:
            reason = method(a).conflicts.get(b)
            if a != b and reason:
                raise ValueError(f"{a} and {b} do not stack: {reason}; allowed: one of them")


def finetunes() -> dict[str, tuple[Method, FineTune]]:
    """Fine-tune kind -> (its method, the fine-tune)."""
    return {ft.kind: (m, ft) for m in methods() for ft in m.finetunes}


def finetune(kind: str) -> tuple[Method, FineTune]:
    kinds = finetunes()
    if kind not in kinds:
        raise ValueError(f"fine-tune kind {kind!r} is not allowed; allowed: {', '.join(kinds)}")
    return kinds[kind]


register(Method(
    "deepcache", "DeepCache", "backend.methods.deepcache.config:DeepCacheConfig", "backend.methods.deepcache:apply",
    order=30, unet_access="hooks", curve="DeepCache", curve_knob="interval", curve_axis="DeepCache interval N",
    curve_label="backend.methods.deepcache.config:curve_label"))
register(Method(
    "quant", "Quantization (PTQ / EfficientDM)", "backend.methods.quant.config:QuantConfig",
    "backend.methods.quant:apply", order=20, unet_access="own", private_unet="backend.methods.quant:private_unet",
    curve="quant", curve_knob="weight_bits", curve_axis="weight bits",
    curve_label="backend.methods.quant.config:curve_label",
    finetunes=(FineTune("efficientdm", "backend.methods.quant.config:FinetuneConfig", "backend.methods.quant.cli",
                        train="backend.methods.quant.train:finetune", watch="backend.methods.quant.watch:job_watch",
                        presets="backend.methods.quant.config:FINETUNE_PRESETS"),),
    assets=(("EfficientDM W4A4 (assets)", "efficientdm-w4a4"),
            ("EfficientDM W4A4 of shapes-dit (assets)", "efficientdm-w4a4-dit"))))
register(Method(
    "consistency", "Consistency (LCM / RG-LCD)", "backend.methods.consistency.config:ConsistencyConfig",
    "backend.methods.consistency:apply", order=10, unet_access="copy", curve="LCM", curve_knob="steps",
    curve_axis="steps", curve_label="backend.methods.consistency.config:curve_label",
    finetunes=(FineTune("lcd", "backend.methods.consistency.config:DistillConfig", "backend.methods.consistency.cli",
                        train="backend.methods.consistency.distill:distill",
                        presets="backend.methods.consistency.config:LCD_PRESETS"),
               FineTune("rg-lcd", "backend.methods.consistency.config:DistillConfig",
                        train="backend.methods.consistency.distill:distill",
                        presets="backend.methods.consistency.config:RG_LCD_PRESETS")),
    assets=(("RG-LCM LoRA, 2 steps (assets)", "rg-lcm-lora"),
            ("RG-LCM LoRA of shapes-dit, 2 steps (assets)", "rg-lcm-lora-dit")),
    families=("sd1", "sd2", "sdxl", "unet", "pixart", "sd3"),
    families_why="no Flux student is built (students.py): Flux is guidance-distilled, so LCD's CFG teacher "
                 "step does not apply, and its transformer takes packed latents with position ids"))
register(Method(
    "tome", "ToMe (tomesd)", "backend.methods.tome.config:ToMeConfig", "backend.methods.tome:apply", order=25,
    unet_access="hooks", curve="ToMe", curve_knob="ratio", curve_axis="ToMe merge ratio",
    families=("sd1", "sd2", "sdxl", "unet"), families_why="tomesd patches the U-Net's transformer blocks"))
register(Method(
    "diffusers_cache", "diffusers cache (PAB; FBC/FasterCache/TaylorSeer/MagCache DiT only)",
    "backend.methods.diffusers_cache.config:DiffusersCacheConfig", "backend.methods.diffusers_cache:apply", order=32,
    unet_access="hooks", curve="diffusers cache", curve_knob="skip_range", curve_axis="cache skip range",
    conflicts={"deepcache": "two caches would each skip parts of the denoiser on their own schedules"}))
register(Method(
    "peer_int8", "int8 by torchao / quanto / torch dynamic", "backend.methods.peer_int8.config:PeerInt8Config",
    "backend.methods.peer_int8:apply", order=22, unet_access="copy", curve="peer int8", curve_knob="backend",
    curve_axis="int8 library", conflicts={"quant": "two quantizations of the same layers"}))
register(Method(
    "schedule", "Few-step schedule (TCD / Align-Your-Steps)", "backend.methods.schedule.config:ScheduleConfig",
    "backend.methods.schedule:apply", order=40, unet_access="hooks", curve="schedule", curve_knob="steps",
    curve_axis="steps", families=("sd1", "sd2", "sdxl", "unet"),
    families_why="TCD and the Align-Your-Steps lists are for DDPM-type noise schedules"))
register(Method(
    "compile", "torch.compile", "backend.methods.compile.config:CompileConfig", "backend.methods.compile:apply",
    order=90, unet_access="hooks", searched=False,
    conflicts={s: f"{what} would recompile the compiled denoiser at every step" for s, what in (
        ("deepcache", "DeepCache's per-step full/partial switch"), ("diffusers_cache", "the cache's per-step state"),
        ("tome", "ToMe's per-call token bookkeeping"), ("quant", "per-step activation scales (TALSQ)"))}))
