"""Gradio controls generated from declared parameters (MethodConfig.describe()): a new knob needs no UI code.

A declaration {name, type, default, help, minimum, maximum, choices} becomes:
choices → dropdown; bool → checkbox; a whole number with ≤ 7 values → radio; a bounded number →
slider (bounds from the declaration; ``slider_cap`` limits very wide integer ranges in compact forms);
otherwise a number box with the declared bounds; a string → text box, or a dropdown of finished
checkpoints for a parameter named ``checkpoint``.
"""

from __future__ import annotations

import math
from typing import Any

import gradio as gr


def _step(lo: float, hi: float) -> float:
    span = hi - lo
    return 10 ** math.floor(math.log10(span)) / 100 if span > 0 else 0.01


def make_control(p: dict, value: Any = None, slider_cap: int | None = None, checkpoints: list | None = None,
                 label: str | None = None, elem_id: str | None = None, family: dict | None = None
                 ) -> gr.components.Component:
    """One control for a declared parameter (its current value or the declared default), restricted by
    ``family`` (:func:`family_props` of the chosen model's family)."""
    value = p["default"] if value is None else value
    kind, lo, hi, choices = p["type"], p.get("minimum"), p.get("maximum"), p.get("choices")
    common = {"label": label or p["name"], "info": p.get("help"), "elem_id": elem_id, "visible": True}
    common.update({k: v for k, v in (family or {}).items() if k in common})
    if choices is not None:
        choices = (family or {}).get("choices", list(choices))
        return gr.Dropdown(choices=choices, value=value if value in choices else choices[0], **common)
    if kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if kind == "str" and p["name"] == "checkpoint":
        return gr.Dropdown(choices=checkpoint_choices(checkpoints or []), value=value or "", allow_custom_value=True,
                           **common)
    if kind == "str":
        return gr.Textbox(value=value, **common)
    if kind in ("int", "float") and lo is not None and hi is not None:
        if kind == "int" and hi - lo <= 6:
            return gr.Radio(choices=list(range(int(lo), int(hi) + 1)), value=int(value), **common)
        if kind == "int" and slider_cap is not None and hi - lo > slider_cap:
            hi = lo + slider_cap
        if hi - lo <= 100 or kind == "int" and slider_cap is not None:
            step = 1 if kind == "int" else _step(lo, hi)
            return gr.Slider(minimum=lo, maximum=hi, step=step, value=min(max(value, lo), hi), **common)
    if kind in ("int", "float"):
        return gr.Number(value=value, minimum=lo, maximum=hi, precision=0 if kind == "int" else None, **common)
    return gr.Textbox(value=str(value), **common)


def family_props(form: Any, section: str, p: dict) -> dict:
    """How a family (a ``backend.runs.knobs.FamilyForm``; None: no restriction) shows a declared parameter:
    hidden when it is declared for other families; for a parameter with refused choices, the choices that run there
    and a note naming the others and why. Only the properties the family can change (empty: nothing to change)."""
    props: dict = {}
    if p.get("families"):
        props["visible"] = form is None or p["name"] not in form.hidden.get(section, ())
    if p.get("refused"):
        note = form.choice_note(section, p["name"]) if form else ""
        props["choices"] = form.allowed_choices(section, p) if form else list(p["choices"])
        props["info"] = p["help"] + (f" — {note}" if note else "")
    return props


def method_on_props(form: Any, section: str) -> dict:
    """A method's on box for a family: unticked, locked and saying why when the family refuses the method."""
    why = form.refused.get(section) if form else None
    return {"interactive": False, "value": False, "info": why} if why else {"interactive": True, "info": None}


def checkpoint_choices(checkpoints: list[dict]) -> list[tuple[str, str]]:
    return [("(none)", "")] + [(c["label"], c["path"]) for c in checkpoints]


def coerce(p: dict, value: Any) -> Any:
    """A control's value as the declared type (sliders and number boxes give floats)."""
    if value is None:
        return p["default"]
    if p.get("choices") is not None:
        return value
    if p["type"] == "int":
        return whole(value)
    if p["type"] == "float":
        return float(value)
    if p["type"] == "bool":
        return bool(value)
    return value


def whole(value: Any) -> Any:
    """A number box's value as an int when it is whole; anything else unchanged, for validation to refuse by name
    (2.5 steps is refused, not rounded to 2)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value
