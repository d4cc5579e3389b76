"""Declared method parameters: one place for defaults, ranges, help text and validation.

Each method's ``config.py`` is a dataclass deriving from :class:`MethodConfig` whose fields
are made with :func:`param`. ``from_dict`` validates a Variant section against the
declaration (unknown keys, types, ranges, choices) and ``describe`` lists the parameters so
the UI and sweeps can build controls without knowing the method.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

MAX_SEED = 2**53 - 1  # exact in JSON and in the browser; torch and numpy accept it


def param(default: Any, help: str, *, minimum: float | None = None, maximum: float | None = None,
          choices: tuple | None = None, ui: bool = True, families: tuple[str, ...] | None = None,
          refused: dict[Any, dict[str, str]] | None = None) -> Any:
    """A dataclass field with its declaration (help text, bounds, choices; ui=False hides it from forms;
    ``families``: the model families the knob means something for, None = all; the stack search varies it only
    there and forms show it only there; ``refused``: choice -> {family: why it does not run there}, which the
    pipeline build refuses, forms leave out and the stack search does not try)."""
    meta = {"help": help, "minimum": minimum, "maximum": maximum, "choices": choices, "ui": ui, "families": families,
            "refused": refused}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class MethodConfig:
    """Base class of method configs; ``section`` is the Variant key the config lives under."""

    section: ClassVar[str] = ""
    # What a checkpoint of this section decides, for forms built from the declaration: the section's keys a
    # checkpoint fixes (the UI locks them), the Variant keys it sets (e.g. a consistency student's scheduler), and
    # "module:function" reading them from a checkpoint folder: implies(path) -> {section: {key: value}, key: value}.
    locked_by_checkpoint: ClassVar[tuple[str, ...]] = ()
    checkpoint_sets: ClassVar[tuple[str, ...]] = ()
    checkpoint_implies: ClassVar[str | None] = None

    @classmethod
    def from_dict(cls, data: dict | None) -> MethodConfig:
        """Validate a Variant section; ValueError names the bad key or value and what is allowed."""
        if data is not None and not isinstance(data, dict):
            raise ValueError(f"{cls.section}: expected an object, got {data!r}")
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.section}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(names))}")
        obj = cls(**data)  # __post_init__ checks every value against its declaration
        obj.validate()
        return obj

    def __post_init__(self) -> None:
        """A config built any way (``from_dict``, directly, ``dataclasses.replace``) holds only declared values
        (types, bounds, choices): ValueError naming the key and what is allowed, as for a Variant section. The
        cross-field rules of a user's section (:meth:`validate`) are checked by ``from_dict``."""
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _check(self.section, f, getattr(self, f.name)))

    def validate(self) -> None:
        """Cross-field checks; override in a method config."""

    @classmethod
    def refused_choices(cls, family: str) -> dict[str, dict[Any, str]]:
        """Knob -> {choice: why} for the declared choices that do not run on a model of ``family``."""
        out = {}
        for p in cls.describe():
            why = {c: fams[family] for c, fams in (p.get("refused") or {}).items() if family in fams}
            if why:
                out[p["name"]] = why
        return out

    def family_refusal(self, family: str) -> str | None:
        """One line naming the first knob whose value does not run on ``family``, why, and the choices that do;
        None when every value runs there."""
        for name, why in self.refused_choices(family).items():
            value = getattr(self, name)
            if value in why:
                choices = {p["name"]: p["choices"] for p in self.describe()}[name]
                allowed = ", ".join(str(c) for c in choices if c not in why)
                return (f"{self.section}.{name}: {value!r} does not run on family {family!r} ({why[value]}); "
                        f"allowed there: {allowed}")
        return None

    def check_variant(self, variant: Any) -> None:
        """Checks against the rest of its Variant (scheduler, steps, other sections); ValueError naming the clash.
        Override in a method config."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def label(self) -> str:
        """A short text of these settings for column labels: the section and every UI knob off its default
        (override in a method config for a terser one, e.g. "DeepCache N=5")."""
        changed = [f"{p['name']}={getattr(self, p['name'])}" for p in self.describe()
                   if p.get("ui", True) and getattr(self, p["name"]) != p["default"]]
        return " ".join([self.section, *changed])

    @classmethod
    def describe(cls) -> list[dict]:
        """The declared parameters: name, type, default, help, minimum, maximum, choices."""
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out.append({"name": f.name, "type": type(default).__name__, "default": default,
                        **{k: v for k, v in f.metadata.items()}})
        return out


def cli_help(config: type[MethodConfig], name: str) -> str:
    """The help of a declared parameter for an argparse flag: its help text and default, with every ``%``
    escaped (argparse %-formats help strings, so a bare "79%" would end ``--help`` in a traceback)."""
    f = {f.name: f for f in dataclasses.fields(config)}[name]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return f"{f.metadata['help']} (default {default})".replace("%", "%%")


def _check(section: str, f: dataclasses.Field, value: Any) -> Any:
    meta = f.metadata
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    where = f"{section}.{f.name}"
    if meta.get("choices") is not None:
        if value not in meta["choices"]:
            allowed = ", ".join(map(str, meta["choices"]))
            raise ValueError(f"{where}: {value!r} is not allowed; allowed: {allowed}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(default, (int, float)) and default is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: expected a finite number, got {value!r}")
        if isinstance(default, int) and not isinstance(default, bool) and value != int(value):
            raise ValueError(f"{where}: expected a whole number, got {value!r}")
        value = type(default)(value)
        lo, hi = meta.get("minimum"), meta.get("maximum")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError(f"{where}: {value} is out of range; allowed: {allowed_range(lo, hi)}")
    return value


def allowed_range(lo: float | None, hi: float | None) -> str:
    """'0 to 8', '≥ 0' or '≤ 1' (no 'None' for an open end)."""
    if lo is not None and hi is not None:
        return f"{_num(lo)} to {_num(hi)}"
    return f"≥ {_num(lo)}" if lo is not None else f"≤ {_num(hi)}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
