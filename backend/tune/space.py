"""The search space of ``tune``: built from the registry (every method's declared knobs), restricted by ``--space``.

A *stack* is a mapping of dotted keys to values — ``{"steps": 25, "deepcache.interval": 2, "deepcache.branch": 0}``;
a method is on when one of its keys is present. Each registered method contributes its declared parameters
(``MethodConfig.describe()``): choices as they are, booleans both ways, numbers discretised on a short geometric
ladder around the default inside the bounds, a ``checkpoint`` knob over the checkpoints that exist (folders under
``assets/`` holding a ``*SECTION*.json`` file, as Speedlab's fine-tunes write them; a stack with a checkpoint
leaves the section's other knobs to it). Top-level knobs: ``steps``
(a ladder below the model's default) and ``scheduler``. A method registered later joins with no change here.

``--space`` (YAML or JSON) narrows it::

    methods: [deepcache, quant]          # which methods may be on (default: every registered one)
    values:                              # dotted key -> the values to search (replaces the registry's ladder)
      deepcache.interval: [2, 3, 4]
      steps: [25, 50]
    fixed:                               # dotted key -> one value held in every stack (a method here is always on)
      deepcache.schedule: uniform
"""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.metadata import checkpoint_base_model
from backend.methods import registry
from backend.variant import SCHEDULERS, Variant, VariantError, read_text_file

SPACE_KEYS = ("methods", "values", "fixed")
TOP_KEYS = ("steps", "scheduler")
ASSETS = Path(__file__).resolve().parents[2] / "assets"
MAX_ENUMERATE = 20000  # spaces up to this size are enumerated exactly; larger ones are sampled


def _ladder_int(default: int, lo: float | None, hi: float | None) -> list[int]:
    top = 2 * max(default, 1)
    points = {int(round(x)) for x in (1.0, *_geom(1.0, top, 4))} | {default}
    if lo is not None:
        points.add(int(lo))
    return sorted(p for p in points if (lo is None or p >= lo) and (hi is None or p <= hi))


def _geom(a: float, b: float, n: int) -> list[float]:
    return [a * (b / a) ** (i / (n - 1)) for i in range(n)] if b > a else [a]


def _ladder_float(default: float, lo: float | None, hi: float | None) -> list[float]:
    if default == 0:
        return [0.0]
    points = {round(x, 6) for x in (default / 2, default, default * 2)}
    clip = {min(max(p, lo if lo is not None else p), hi if hi is not None else p) for p in points}
    return sorted(clip)


def checkpoints(section: str, root: Path = ASSETS, model: str | None = None) -> list[str]:
    """Folders under ``root`` that hold a checkpoint of ``section`` (a file ``*SECTION*.json`` inside); with
    ``model``, only those made from it (its ``base_model``; a checkpoint that does not say is kept)."""
    if not root.is_dir():
        return []
    return [str(d) for d in sorted(root.iterdir()) if d.is_dir() and any(d.glob(f"*{section}*.json"))
            and (model is None or checkpoint_base_model(d, section) in (None, model))]


def registry_values(param: dict, section: str, family: str | None = None, model: str | None = None) -> list:
    """The values searched for one declared parameter (choices, both booleans, a numeric ladder, checkpoints);
    with ``family``, not the choices refused there; with ``model``, only the checkpoints made from it."""
    default, lo, hi = param["default"], param.get("minimum"), param.get("maximum")
    if param.get("choices"):
        refused = {c for c, fams in (param.get("refused") or {}).items() if family in fams}
        return [c for c in param["choices"] if c not in refused]
    if isinstance(default, bool):
        return [False, True]
    if isinstance(default, int):
        return _ladder_int(default, lo, hi)
    if isinstance(default, float):
        return _ladder_float(default, lo, hi)
    if param["name"] == "checkpoint":
        return ([default] if default else [""]) + checkpoints(section, model=model)
    return [default]


def method_dimensions(family: str | None = None, model: str | None = None) -> dict[str, dict[str, list]]:
    """Every registered method's searchable knobs (those shown in forms) with their values; with ``family``, only
    the knobs declared for it (``param(families=...)``: DeepCache's branch on U-Nets, k / m on transformers) and
    only the choices that run there (``param(refused=...)``); with ``model``, only checkpoints made from it."""
    return {m.section: {p["name"]: registry_values(p, m.section, family, model)
                        for p in m.config_class().describe()
                        if p.get("ui", True) and (family is None or family in (p.get("families") or (family,)))}
            for m in registry.methods()}


def top_dimensions(default_steps: int) -> dict[str, list]:
    steps = sorted({max(1, int(round(x))) for x in _geom(max(default_steps / 12.5, 1), default_steps, 5)})
    return {"steps": steps, "scheduler": [None, *SCHEDULERS]}


@dataclass
class Space:
    """Dimensions of the search: top-level keys and, per method that may be on, its knobs; ``fixed`` keys are held."""

    model: str
    top: dict[str, list]
    methods: dict[str, dict[str, list]]
    fixed: dict[str, Any] = field(default_factory=dict)
    base: dict = field(default_factory=dict)  # Variant keys of every stack and of the baseline (model, size...)

    def required(self) -> set[str]:
        return {k.split(".")[0] for k in self.fixed if "." in k}

    def size(self) -> int:
        """Number of stacks (invalid combinations included; the baseline itself excluded)."""
        n = math.prod(len(v) for v in self.top.values())
        for section, knobs in self.methods.items():
            on = math.prod(len(v) for v in knobs.values())
            n *= on if section in self.required() else on + 1
        return max(n - 1, 0) if not self.required() else n

    def describe(self) -> dict:
        return {"top": self.top, "methods": self.methods, "fixed": self.fixed, "size": self.size()}

    def enumerate(self) -> list[dict]:
        """Every stack (small spaces only: ``size() <= MAX_ENUMERATE``), the baseline itself left out."""
        parts = [[{k: v} for v in values] for k, values in self.top.items()]
        for section, knobs in self.methods.items():
            on = [{f"{section}.{k}": v for k, v in zip(knobs, combo, strict=True)}
                  for combo in itertools.product(*knobs.values())]
            parts.append(on if section in self.required() else [{}] + on)
        out = []
        for combo in itertools.product(*parts):
            stack = {k: v for d in combo for k, v in d.items()}
            if not self.is_baseline(stack):
                out.append(stack)
        return out

    def is_baseline(self, stack: dict) -> bool:
        return not any("." in k for k in {**stack, **self.fixed}) and all(
            stack.get(k) in (None, self.base_top(k)) for k in self.top)

    def base_top(self, key: str):
        return self.base.get(key, self.top_default(key))

    def top_default(self, key: str):
        return Variant.from_dict({"model": self.model}).to_dict().get(key)

    def sample(self, rng: random.Random) -> dict:
        """One random stack (each method on with probability 1/2 unless fixed on; knob values uniform)."""
        while True:
            stack = {k: rng.choice(v) for k, v in self.top.items()}
            for section, knobs in self.methods.items():
                if section in self.required() or rng.random() < 0.5:
                    stack.update({f"{section}.{k}": rng.choice(v) for k, v in knobs.items()})
            if not self.is_baseline(stack):
                return stack

    def neighbours(self, stack: dict) -> list[dict]:
        """Stacks one move away: one knob to an adjacent value, or one method switched on (at its defaults) or off."""
        out = []
        for key, values in self._dims(stack):
            i = values.index(stack[key]) if stack.get(key) in values else 0
            for j in (i - 1, i + 1):
                if 0 <= j < len(values):
                    out.append({**stack, key: values[j]})
        for section in self.methods:
            on = any(k.startswith(section + ".") for k in stack)
            if on and section not in self.required():
                out.append({k: v for k, v in stack.items() if not k.startswith(section + ".")})
            elif not on:
                out.append({**stack, **self.defaults(section)})
        return [s for s in out if not self.is_baseline(s)]

    def defaults(self, section: str) -> dict:
        """One method on at its declared defaults (a knob whose default is not among its values: its middle value)."""
        declared = {p["name"]: p["default"] for p in registry.method(section).config_class().describe()}
        return {f"{section}.{k}": declared[k] if declared.get(k) in v else _middle(v)
                for k, v in self.methods[section].items()}

    def _dims(self, stack: dict) -> list[tuple[str, list]]:
        dims = list(self.top.items())
        for section, knobs in self.methods.items():
            if any(k.startswith(section + ".") for k in stack):
                dims += [(f"{section}.{k}", v) for k, v in knobs.items()]
        return dims

    def variant(self, stack: dict) -> dict:
        """The Variant (plain dict) of a stack; VariantError when the combination is not valid."""
        data: dict = {"model": self.model, **self.base}
        for key, value in {**stack, **self.fixed}.items():
            if value is None:
                continue
            if "." in key:
                section, knob = key.split(".", 1)
                data.setdefault(section, {})[knob] = value
            else:
                data[key] = value
        for section, knobs in data.items():  # a checkpoint carries its own settings: the other knobs stay unset
            if isinstance(knobs, dict) and knobs.get("checkpoint"):
                data[section] = {"checkpoint": knobs["checkpoint"]}
        data["name"] = stack_name(stack)
        return Variant.from_dict(data).to_dict()

    def baseline(self) -> dict:
        data = {"model": self.model, **self.base, "name": "baseline"}
        data.update({k: v for k, v in self.fixed.items() if "." not in k})
        return Variant.from_dict(data).to_dict()


def _middle(values: list):
    return values[len(values) // 2]


def stack_name(stack: dict) -> str:
    def short(v):
        return Path(v).name if isinstance(v, str) and "/" in v else v

    return " ".join(f"{k}={short(v)}" for k, v in sorted(stack.items()) if v is not None) or "baseline"


def load_space(text_or_path: str | None) -> dict:
    """``--space``: a YAML/JSON file path or inline JSON; {} when not given."""
    import yaml

    if not text_or_path:
        return {}
    p = Path(text_or_path)
    if p.is_file():
        text = read_text_file(p, "--space")
    elif text_or_path.lstrip().startswith("{"):
        text = text_or_path
    else:
        raise ValueError(f"--space {text_or_path!r} is neither an existing file nor inline JSON")
    try:
        data = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise ValueError(f"--space: malformed YAML/JSON: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"--space: expected a mapping with keys {', '.join(SPACE_KEYS)}")
    return data


def build_space(model: str, spec: dict | None = None, default_steps: int = 50, base: dict | None = None,
                family: str | None = None) -> Space:
    """The registry's space for a model, narrowed by a ``--space`` spec; ValueError for an empty or contradictory
    space, naming the key. With the model's ``family``, methods and knobs that do not apply to it are left out."""
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(SPACE_KEYS))
    if unknown:
        raise ValueError(f"--space: unknown key {unknown[0]!r}; allowed: {', '.join(SPACE_KEYS)}")
    all_methods = method_dimensions(family, model)
    # by default every method the registry marks as searched (compiling, minutes on a CPU, is searched only by name)
    sections = spec.get("methods", [s for s in all_methods if registry.method(s).searched
                                    and (family is None or registry.method(s).refusal(family) is None)])
    if not isinstance(sections, list) or not all(isinstance(s, str) for s in sections):
        raise ValueError(f"--space methods: {sections!r}; allowed: a list of {', '.join(all_methods)}")
    for s in sections:
        if s not in all_methods:
            raise ValueError(f"--space methods: {s!r} is not a method; allowed: {', '.join(all_methods)}")
    values, fixed = spec.get("values", {}), spec.get("fixed", {})
    for name, part in (("values", values), ("fixed", fixed)):
        if not isinstance(part, dict):
            raise ValueError(f"--space {name}: expected a mapping of dotted keys (e.g. deepcache.interval)")
    top = top_dimensions(default_steps)
    methods = {s: dict(all_methods[s]) for s in sections}
    if values:  # values given: only the listed keys are searched; the other knobs keep their defaults
        top = {}
        methods = {s: {} for s in sections}
    for key, vals in values.items():
        _check_key(key, sections, all_methods)
        if not isinstance(vals, list) or not vals:
            raise ValueError(f"--space values.{key}: {vals!r}; allowed: a non-empty list of values")
        if key in fixed:
            raise ValueError(f"--space: {key!r} is both in values and fixed; give it in one of them")
        if "." in key:
            section, knob = key.split(".", 1)
            methods[section][knob] = list(dict.fromkeys(_check_value(key, v) for v in vals))
        else:
            top[key] = list(dict.fromkeys(_check_value(key, v) for v in vals))
    for key, value in fixed.items():
        _check_key(key, sections, all_methods)
        _check_value(key, value)
    for section, knobs in methods.items():  # a method without listed values: on or off at its defaults
        if not knobs:
            first = registry.method(section).config_class().describe()[0]
            knobs[first["name"]] = [first["default"]]
    space = Space(model, top, methods, dict(fixed), dict(base or {}))
    if space.size() == 0:
        raise ValueError("--space: the space is empty (no method may be on and no top-level key varies); "
                         "allowed: at least one method in methods or a steps/scheduler list in values")
    return space


def _check_key(key: str, sections: list[str], all_methods: dict) -> None:
    if not isinstance(key, str):
        raise ValueError(f"--space: key {key!r} must be a string")
    if "." not in key:
        if key not in TOP_KEYS:
            raise ValueError(f"--space: {key!r} is not searchable; allowed: {', '.join(TOP_KEYS)} or section.knob")
        return
    section, knob = key.split(".", 1)
    if section not in all_methods:
        raise ValueError(f"--space: {key!r}: {section!r} is not a method; allowed: {', '.join(all_methods)}")
    if section not in sections:
        raise ValueError(f"--space: {key!r} names method {section!r}, which methods leaves out; "
                         f"add it to methods or drop the key")
    declared = [p["name"] for p in registry.method(section).config_class().describe()]
    if knob not in declared:
        raise ValueError(f"--space: {key!r}: {knob!r} is not a knob of {section}; allowed: {', '.join(declared)}")


def _check_value(key: str, value: Any) -> Any:
    """A value validated by its declaration (the method's from_dict, or the Variant's own keys)."""
    try:
        if "." in key:
            section, knob = key.split(".", 1)
            registry.method(section).config_class().from_dict({knob: value})
        else:
            Variant.from_dict({"model": "tiny-arch", key: value})
    except (VariantError, ValueError) as exc:
        raise ValueError(f"--space {key}: {exc}") from None
    return value


def space_json(space: Space) -> str:
    return json.dumps(space.describe(), default=str)
