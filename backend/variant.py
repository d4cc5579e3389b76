"""The Variant: plain JSON describing one way of running a model (the contract of design.md)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
)

from backend.methods import registry
from backend.methods.params import MethodConfig

# the Variant's scheduler names and the diffusers schedulers they select
SCHEDULER_CLASSES = {
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "lcm": LCMScheduler,
}
SCHEDULERS = tuple(SCHEDULER_CLASSES)
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")
# Upper bounds: generous (far above any useful setting) so a typo or a hostile request cannot hold the
# device for hours; stricter limits for shared use (the app) are applied on top by its caller.
MAX_STEPS = 1000
MAX_SIDE = 4096
MAX_GUIDANCE = 100.0


class VariantError(ValueError):
    """A Variant that cannot be used; the message names the bad value and what is allowed."""


def method_config_class(section: str) -> type[MethodConfig]:
    """The MethodConfig class of a registered method section."""
    return registry.method(section).config_class()


@dataclasses.dataclass
class Variant:
    """The model and settings (the fields below) plus one section per method that is on (``sections``: each
    registered method's Variant key -> its raw settings; a section is off when absent)."""

    model: str = "shapes"
    model_config: str | None = None  # a single-file model: local diffusers folder of the same family
    allow_pickle: bool | None = None  # a .ckpt single file: opt in to loading a pickle
    name: str | None = None
    scheduler: str | None = None
    steps: int = 50
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    sections: dict[str, dict] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> Variant:
        """Validate plain data; raises VariantError naming the first bad key or value."""
        if not isinstance(data, dict):
            kind = {list: "a JSON array", str: "a JSON string", bool: "a JSON boolean", type(None): "JSON null"}.get(
                type(data), "a JSON number")
            raise VariantError(f"a variant must be a JSON object {{...}}, got {kind}")
        names = [*fields(), *registry.sections()]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise VariantError(f"unknown variant key {unknown[0]!r}; allowed: {', '.join(names)}")
        methods = registry.sections()
        v = cls(**{k: x for k, x in data.items() if k not in methods},
                sections={k: x for k, x in data.items() if k in methods and x is not None})
        v._validate()
        return v

    @classmethod
    def schema(cls) -> dict:
        """What a Variant may hold: its keys with their defaults, and each method section's declared parameters."""
        defaults = cls()
        return {"keys": {k: getattr(defaults, k) for k in fields()},
                "allowed": {"scheduler": list(SCHEDULERS), "device": list(DEVICES), "dtype": list(DTYPES)},
                "sections": {m.section: {"title": m.title, "params": m.config_class().describe()}
                             for m in registry.methods()}}

    @classmethod
    def parse(cls, text_or_path: str) -> Variant:
        """A JSON string or the path of a JSON file."""
        text, where = text_or_path, "variant"
        if not text.lstrip().startswith(("{", "[")):
            path = Path(text)
            try:
                is_file = path.is_file()
            except (OSError, ValueError):  # a name too long or with a NUL byte is not a file either
                is_file = False
            if not is_file:
                try:
                    json.loads(text)
                except ValueError:
                    raise VariantError(f"variant {text[:80]!r} is neither JSON nor an existing file") from None
            else:
                text, where = read_text_file(path, "variant file"), f"variant file {str(path)!r}"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            inside = "" if where == "variant" else f" in {where}"
            raise VariantError(f"malformed variant JSON{inside}: {exc.msg} at line {exc.lineno} column {exc.colno}"
                               ) from exc
        except RecursionError:
            raise VariantError(f"{where}: JSON nested too deeply; allowed: a flat variant object") from None
        try:
            return cls.from_dict(data)
        except VariantError as exc:
            raise exc if where == "variant" else VariantError(f"{where}: {exc}") from exc

    def _validate(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise VariantError(f"model: {self.model!r} must be a non-empty string")
        if self.model_config is not None and (not isinstance(self.model_config, str) or not self.model_config.strip()):
            raise VariantError(f"model_config: {self.model_config!r} must be a local diffusers folder path")
        if self.allow_pickle is not None and not isinstance(self.allow_pickle, bool):
            raise VariantError(f"allow_pickle: {self.allow_pickle!r} must be true or false")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise VariantError(f"scheduler: {self.scheduler!r} is not allowed; allowed: {', '.join(SCHEDULERS)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise VariantError(f"steps: {self.steps!r} is not allowed; allowed: a whole number from 1 to {MAX_STEPS}")
        g = self.guidance
        if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g)
                              or not 0 <= g <= MAX_GUIDANCE):
            raise VariantError(f"guidance: {g!r} is not allowed; allowed: a number from 0 to {MAX_GUIDANCE:g}")
        for key in ("height", "width"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 1 <= value <= MAX_SIDE):
                raise VariantError(f"{key}: {value!r} is not allowed; allowed: a whole number from 1 to {MAX_SIDE}")
        if self.device not in DEVICES:
            raise VariantError(f"device: {self.device!r} is not allowed; allowed: {', '.join(DEVICES)}")
        if self.dtype not in DTYPES:
            raise VariantError(f"dtype: {self.dtype!r} is not allowed; allowed: {', '.join(DTYPES)}")
        for section in self.sections:
            config = self.method(section)
            try:
                config.check_variant(self)
            except VariantError:
                raise
            except ValueError as exc:
                raise VariantError(str(exc)) from exc
        try:
            registry.check_stack(list(self.sections))
        except ValueError as exc:
            raise VariantError(str(exc)) from exc

    def method(self, section: str) -> MethodConfig | None:
        """The validated config of a method section, or None when the section is off."""
        registry.method(section)  # ValueError for a section no method registered
        raw = self.sections.get(section)
        if raw is None:
            return None
        try:
            return method_config_class(section).from_dict(raw)
        except VariantError:
            raise
        except ValueError as exc:
            raise VariantError(str(exc)) from exc

    def on(self) -> list[str]:
        """The method sections that are on, in application order."""
        return registry.application_order(list(self.sections))

    def to_dict(self) -> dict:
        """Plain data, without keys left at None; the method sections as top-level keys."""
        out = {k: getattr(self, k) for k in fields() if getattr(self, k) is not None}
        return {**out, **{k: self.sections[k] for k in self.on()}}

    @property
    def label(self) -> str:
        return self.name or json.dumps(self.to_dict(), sort_keys=True)


def fields() -> list[str]:
    """The Variant's own keys (the method sections are the registry's)."""
    return [f.name for f in dataclasses.fields(Variant) if f.name != "sections"]


def read_text_file(path: str | Path, what: str) -> str:
    """A UTF-8 text file's content; VariantError naming the file when it is binary or unreadable as text."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise VariantError(f"{what} {str(path)!r} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x});"
                           " allowed: a text file") from None
    except IsADirectoryError:
        raise VariantError(f"{what} {str(path)!r} is a folder; allowed: a text file") from None
