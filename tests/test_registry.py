"""A method is its package plus one registry entry: a toy fourth method, registered here and nowhere else, shows up
in the CLI help and schema, the Variant, the pipeline build, the UI controls, a sweep and the plots."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from backend.methods import registry
from backend.methods.params import MethodConfig, param
from backend.variant import Variant, VariantError


@dataclasses.dataclass
class ToyConfig(MethodConfig):
    """Scales the U-Net's noise prediction (a stand-in for a real method)."""

    section = "toy"

    level: int = param(1, "how many times the prediction is scaled by 0.99", minimum=1, maximum=3)


APPLIED: list[int] = []


def apply_toy(pipe, config: ToyConfig) -> None:
    APPLIED.append(config.level)

    def scale(module, args, output):
        factor = 0.99 ** config.level
        return (output[0] * factor,) if isinstance(output, tuple) else dataclasses.replace(
            output, sample=output.sample * factor)

    pipe.unet.register_forward_hook(scale)


@pytest.fixture
def toy():
    APPLIED.clear()
    method = registry.register(registry.Method(
        "toy", "Toy method", ToyConfig, apply_toy, order=40, unet_access="hooks", curve="Toy",
        curve_knob="level", curve_axis="toy level"))
    yield method
    registry.unregister("toy")


def test_the_toy_is_a_variant_section(toy):
    v = Variant.from_dict({"model": "tiny-arch", "toy": {"level": 2}, "deepcache": {"interval": 2}})
    assert v.on() == ["deepcache", "toy"]  # registry order: toy's order 40 comes after DeepCache's 30
    assert v.method("toy") == ToyConfig(level=2) and v.to_dict()["toy"] == {"level": 2}
    assert Variant.from_dict(v.to_dict()) == v
    with pytest.raises(VariantError, match=r"toy\.level.*allowed: 1 to 3"):
        Variant.from_dict({"toy": {"level": 9}})
    with pytest.raises(VariantError, match="allowed: .*toy"):
        Variant.from_dict({"toyy": {}})
    schema = Variant.schema()["sections"]["toy"]
    assert schema["title"] == "Toy method" and schema["params"][0]["name"] == "level"


def test_the_toy_is_in_the_cli_help_and_schema(toy, capsys):
    from backend.__main__ import build_parser
    from backend.__main__ import main as cli

    generate = build_parser()._subparsers._group_actions[0].choices["generate"]
    assert "toy" in generate.format_help()
    assert cli(["schema", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sections"]["toy"]["params"][0]["maximum"] == 3
    assert cli(["schema"]) == 0
    assert "toy: Toy method" in capsys.readouterr().out


def test_the_toy_is_applied_by_the_build(toy):
    from backend.runs.build import build_pipeline
    from backend.sampling import generate

    base = Variant.from_dict({"model": "tiny-arch", "steps": 2})
    toyed = Variant.from_dict({**base.to_dict(), "toy": {"level": 3}})
    a = generate(build_pipeline(base), base, ["a red circle"], [0])
    pipe = build_pipeline(toyed)
    b = generate(pipe, toyed, ["a red circle"], [0])
    assert APPLIED == [3]
    assert not torch.equal(torch.from_numpy(a), torch.from_numpy(b))  # the toy changed the images
    from backend.metadata import pipeline_info

    assert pipeline_info(pipe).applied == ("toy",)


def test_the_toy_has_ui_controls(toy, tmp_path):
    import gradio as gr

    from app.__main__ import create
    from backend.runs import knobs

    assert [p["name"] for p in knobs.all_method_params()["toy"]] == ["level"]
    demo, _ = create(model="tiny-arch", store=str(tmp_path / "store"))
    labels = [b.label for b in demo.blocks.values() if isinstance(b, gr.Accordion)]
    assert labels.count("Toy method") >= 2  # one section per variant column
    radios = [b for b in demo.blocks.values() if isinstance(b, gr.Radio) and b.label == "level"]
    assert radios and all(r.choices == [(str(i), i) for i in (1, 2, 3)] for r in radios)


def test_the_toy_sweeps_and_plots(toy, tmp_path):
    from backend.reports.plots import curve_axes, family
    from backend.runs.store import Store
    from backend.runs.sweep import parse_spec, run_sweep

    spec = parse_spec({"base": {"model": "tiny-arch", "steps": 2}, "prompts": ["a red circle"], "seed": 1,
                       "grid": {"toy.level": [1, 2]},
                       "runner": {"repeats": 1, "batch_size": 1, "measure_macs": False}})
    assert [v.name for v in spec.variants] == ["baseline", "level=1", "level=2"]
    run_sweep(spec, tmp_path / "run")
    assert sorted(APPLIED) == [1, 2]
    with Store(tmp_path / "run" / "results.db", readonly=True) as store:
        rows = {r["name"]: r for r in store.variants(spec.run_id)}
    assert rows["level=2"]["status"] == "done" and rows["level=2"]["config"]["toy"] == {"level": 2}
    assert family({"toy": {"level": 2}}) == ("Toy", "Toy", 2.0)
    assert curve_axes()["Toy"] == "toy level" and math.isnan(family({"toy": {"level": 2}, "quant": {"x": 1}})[2])


def test_registering_a_taken_name_is_refused(toy):
    with pytest.raises(ValueError, match="registered already"):
        registry.register(dataclasses.replace(toy))
    with pytest.raises(ValueError, match="unet_access"):
        registry.Method("x", "X", ToyConfig, apply_toy, order=1, unet_access="nope")
