"""The Variant: plain JSON describing one way of running a model (the contract of design.md)."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Any

from backend.methods.params import MethodConfig

SCHEDULERS = ("ddim", "pndm", "dpm++", "euler", "lcm")
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")
# Variant section -> module:Class of its MethodConfig. A section is off when absent.
METHOD_SECTIONS = {
    "deepcache": "backend.methods.deepcache.config:DeepCacheConfig",
    "quant": "backend.methods.quant.config:QuantConfig",
    "consistency": "backend.methods.consistency.config:ConsistencyConfig",
}


class VariantError(ValueError):
    """A Variant that cannot be used; the message names the bad value and what is allowed."""


def method_config_class(section: str) -> type[MethodConfig]:
    module, _, cls = METHOD_SECTIONS[section].partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise VariantError(f"{section}: this method is not available in this build ({exc})") from exc


@dataclasses.dataclass
class Variant:
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
    deepcache: dict | None = None
    quant: dict | None = None
    consistency: dict | None = None

    @classmethod
    def from_dict(cls, data: Any) -> Variant:
        """Validate plain data; raises VariantError naming the first bad key or value."""
        if not isinstance(data, dict):
            raise VariantError(f"a variant must be a JSON object, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise VariantError(f"unknown variant key {unknown[0]!r}; allowed: {', '.join(names)}")
        v = cls(**data)
        v._validate()
        return v

    @classmethod
    def parse(cls, text_or_path: str) -> Variant:
        """A JSON string or the path of a JSON file."""
        text = text_or_path
        if not text.lstrip().startswith("{"):
            path = Path(text)
            if not path.is_file():
                raise VariantError(f"variant {text!r} is neither JSON nor an existing file")
            text = path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise VariantError(f"malformed variant JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
        return cls.from_dict(data)

    def _validate(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise VariantError(f"model: {self.model!r} must be a non-empty string")
        if self.model_config is not None and (not isinstance(self.model_config, str) or not self.model_config.strip()):
            raise VariantError(f"model_config: {self.model_config!r} must be a local diffusers folder path")
        if self.allow_pickle is not None and not isinstance(self.allow_pickle, bool):
            raise VariantError(f"allow_pickle: {self.allow_pickle!r} must be true or false")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise VariantError(f"scheduler: {self.scheduler!r} is not allowed; allowed: {', '.join(SCHEDULERS)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps <= 0:
            raise VariantError(f"steps: {self.steps!r} must be a whole number ≥ 1")
        if self.guidance is not None and (isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float))
                                          or self.guidance < 0):
            raise VariantError(f"guidance: {self.guidance!r} must be a number ≥ 0")
        for key in ("height", "width"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise VariantError(f"{key}: {value!r} must be a positive whole number")
        if self.device not in DEVICES:
            raise VariantError(f"device: {self.device!r} is not allowed; allowed: {', '.join(DEVICES)}")
        if self.dtype not in DTYPES:
            raise VariantError(f"dtype: {self.dtype!r} is not allowed; allowed: {', '.join(DTYPES)}")
        for section in METHOD_SECTIONS:
            self.method(section)
        if self.consistency is not None and self.scheduler not in (None, "lcm"):
            raise VariantError(f"consistency and scheduler {self.scheduler!r} are incompatible: a consistency "
                               "student samples with the lcm scheduler (omit scheduler or use \"lcm\")")

    def method(self, section: str) -> MethodConfig | None:
        """The validated config of a method section, or None when the section is off."""
        raw = getattr(self, section)
        if raw is None:
            return None
        try:
            return method_config_class(section).from_dict(raw)
        except VariantError:
            raise
        except ValueError as exc:
            raise VariantError(str(exc)) from exc

    def to_dict(self) -> dict:
        """Plain data, without keys left at None."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @property
    def label(self) -> str:
        return self.name or json.dumps(self.to_dict(), sort_keys=True)
