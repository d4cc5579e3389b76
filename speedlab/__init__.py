"""Speedlab's Python API: the functions the CLI and the workbench call, under one short name.

    import speedlab

    pipe = speedlab.load("shapes")                                  # a diffusers pipeline (the embedded model)
    fast = speedlab.Variant.from_dict({"model": "shapes", "deepcache": {"interval": 3}})
    images = speedlab.generate(speedlab.build(fast), fast, ["a red circle"], [0])     # N×H×W×3 floats in [0, 1]
    row = speedlab.evaluate(fast, baseline=speedlab.Variant.from_dict({"model": "shapes"}), n=50)
    outcome = speedlab.sweep("spec.yaml", "runs/my-sweep")          # or a spec dict; rerun to resume
    speedlab.report("runs/my-sweep", "report.html")

On a pipeline you hold: ``speedlab.apply_deepcache(pipe, {"interval": 3})`` (a hook; ``remove`` in
``backend.methods.deepcache``), ``speedlab.quantize(pipe, {"weight_bits": 8, "act_bits": 8})`` (rewrites the U-Net in
place: ``load`` shares weights with every pipeline of the process, so first ``pipe.unet = copy.deepcopy(pipe.unet)``
— or put ``"quant"`` in the Variant and ``build`` it, which does that for you).

Every name here is the backend's own function or class (no logic of its own beyond reading a sweep spec): bad input
raises ``ValueError`` with one line naming the value and what is allowed, as on the command line.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, imported on first use below (``import speedlab`` stays instant)
    from backend.methods.deepcache import apply as apply_deepcache
    from backend.methods.quant import apply as quantize
    from backend.models import load_pipeline as load
    from backend.reports.export import export_report as report
    from backend.runs.build import build_pipeline as build
    from backend.runs.runner import evaluate_variant as evaluate
    from backend.runs.sweep import SweepOutcome
    from backend.sampling import generate
    from backend.variant import Variant

_EXPORTS = {  # name here: (module, name there)
    "Variant": ("backend.variant", "Variant"),
    "apply_deepcache": ("backend.methods.deepcache", "apply"),
    "build": ("backend.runs.build", "build_pipeline"),
    "evaluate": ("backend.runs.runner", "evaluate_variant"),
    "generate": ("backend.sampling", "generate"),
    "load": ("backend.models", "load_pipeline"),
    "quantize": ("backend.methods.quant", "apply"),
    "report": ("backend.reports.export", "export_report"),
}
__all__ = ["Variant", "apply_deepcache", "build", "evaluate", "generate", "load", "quantize", "report", "sweep",
           "tune"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'speedlab' has no attribute {name!r}; it has {', '.join(__all__)}")
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def sweep(spec: dict | str | Path, rundir: str | Path, executor: str = "local", **kwargs: Any) -> SweepOutcome:
    """Measure a sweep spec (a dict, or a .yaml/.json file) into ``rundir`` (``backend.runs.sweep.run_sweep``; more
    keyword arguments go to it): the baseline first, every variant on the same prompts and seeds; resumable."""
    from backend.runs.sweep import load_spec, parse_spec, run_sweep

    return run_sweep(parse_spec(spec if isinstance(spec, dict) else load_spec(spec)), rundir, executor, **kwargs)


def tune(*args: Any, **kwargs: Any):
    """Search method stacks for the fastest one within a quality tolerance (``backend.tune.tune``; arguments as
    ``python -m backend tune``)."""
    try:
        from backend.tune import tune as backend_tune
    except ModuleNotFoundError as exc:
        if exc.name not in ("backend.tune", "backend"):
            raise
        raise ImportError("speedlab.tune needs backend/tune (the stack search), which this build does not "
                          "include") from None
    return backend_tune(*args, **kwargs)
