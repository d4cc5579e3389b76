"""Transformer (DiT) families: tiny PixArt / SD3 / Flux builds load, generate with the same noise for the same seed,
refuse what does not apply in one line, and block caching (DeepCache's idea on DiT blocks) is exact at interval 1."""

import json

import numpy as np
import pytest
import torch

from backend.__main__ import main
from backend.metadata import pipeline_info
from backend.methods import registry
from backend.methods.deepcache import cached_tensors, get_hook
from backend.models import denoiser, load_pipeline, model_family
from backend.runs.build import build_pipeline
from backend.sampling import generate
from backend.variant import Variant, method_config_class

TINY = {"tiny-pixart": "pixart", "tiny-sd3": "sd3", "tiny-flux": "flux"}
PROMPTS = ["a red circle", "a small blue square"]


def _run(data: dict, prompts=PROMPTS):
    v = Variant.from_dict({"steps": 4, **data})
    pipe = build_pipeline(v)
    return generate(pipe, v, prompts, list(range(len(prompts)))), pipe


@pytest.mark.parametrize("model", TINY)
def test_tiny_dit_family_and_generate(model):
    pipe = load_pipeline(model)
    assert model_family(pipe) == TINY[model] == pipeline_info(pipe).family
    assert denoiser(pipe) is pipe.transformer
    images, _ = _run({"model": model})
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()
    again, _ = _run({"model": model})  # same seeds, same initial noise: the same images
    np.testing.assert_array_equal(images, again)


@pytest.mark.parametrize("model", TINY)
def test_block_cache_interval_1_is_bit_identical_and_caches_between(model):
    base, _ = _run({"model": model})
    one, pipe = _run({"model": model, "deepcache": {"interval": 1}})
    assert get_hook(pipe) is not None and get_hook(pipe).stats()["partial"] == 0
    np.testing.assert_array_equal(base, one)
    cached, pipe = _run({"model": model, "deepcache": {"interval": 2, "first_blocks": 1, "last_blocks": 1}})
    stats = get_hook(pipe).stats()
    assert stats["patterns"] == ["FpFp"] and stats["cache_bytes"] > 0
    assert np.isfinite(cached).all() and not np.array_equal(cached, base)
    assert cached_tensors(denoiser(pipe)) == 0  # the cache is freed when the call ends
    v = pipeline_info(pipe).variant
    np.testing.assert_array_equal(generate(pipe, v, PROMPTS, [0, 1]), cached)  # state reset per call


def test_block_cache_nonuniform_schedule_and_more_blocks_recomputed_is_closer():
    base, _ = _run({"model": "tiny-pixart", "steps": 8})
    errs = []
    for k in (1, 2):
        img, pipe = _run({"model": "tiny-pixart", "steps": 8,
                          "deepcache": {"interval": 3, "first_blocks": k, "last_blocks": k}})
        errs.append(np.abs(img - base).mean())
    assert errs[1] < errs[0]
    _, pipe = _run({"model": "tiny-sd3", "steps": 8,
                    "deepcache": {"interval": 4, "schedule": "nonuniform", "center": 2, "power": 1.4}})
    assert get_hook(pipe).stats()["full"] == 2


def _cli_error(capsys, variant: dict, tmp_path) -> str:
    out = tmp_path / "x.png"
    assert main(["generate", "--variant", json.dumps(variant), "--prompt", "a red circle",
                 "--out", str(out)]) == 2
    assert not out.exists()
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    return err


def test_bad_input_is_one_line(capsys, tmp_path):
    err = _cli_error(capsys, {"model": "tiny-pixart", "deepcache": {"interval": 2, "first_blocks": 3,
                                                                     "last_blocks": 3}}, tmp_path)
    assert "leaves no block to cache among the 6 blocks" in err
    err = _cli_error(capsys, {"model": "tiny-sd3", "deepcache": {"interval": 2, "branch": 1}}, tmp_path)
    assert "branch" in err and "first_blocks" in err
    err = _cli_error(capsys, {"model": "tiny-arch", "deepcache": {"interval": 2, "first_blocks": 2}}, tmp_path)
    assert "transformer (DiT) knob" in err
    err = _cli_error(capsys, {"model": "tiny-flux", "scheduler": "ddim"}, tmp_path)
    assert "flow-matching" in err and "euler" in err
    err = _cli_error(capsys, {"model": "tiny-flux", "consistency": {"checkpoint": str(tmp_path)}}, tmp_path)
    assert "does not apply to a model of family 'flux'" in err and "guidance-distilled" in err


def test_flow_model_takes_euler_as_its_flow_scheduler():
    images, pipe = _run({"model": "tiny-sd3", "scheduler": "euler"})
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and np.isfinite(images).all()


def test_method_families_refuse_before_anything_is_applied(capsys, tmp_path):
    """A transformer-only method on a U-Net model: one line, from the registry's declaration alone."""
    registry.register(registry.Method("ditonly", "DiT only", "backend.methods.deepcache.config:DeepCacheConfig",
                                      "backend.methods.deepcache:apply", order=40, unet_access="hooks",
                                      families=("pixart", "sd3", "flux"), families_why="it hooks transformer blocks"))
    try:
        err = _cli_error(capsys, {"model": "tiny-arch", "ditonly": {"interval": 2}}, tmp_path)
        assert "ditonly: does not apply to a model of family 'sd1' (it hooks transformer blocks)" in err
        images, _ = _run({"model": "tiny-pixart", "ditonly": {"interval": 2}})
        assert np.isfinite(images).all()
    finally:
        registry.unregister("ditonly")


def test_local_folder_round_trip(tmp_path):
    load_pipeline("tiny-pixart").save_pretrained(tmp_path / "pixart")
    pipe = load_pipeline(str(tmp_path / "pixart"))
    assert model_family(pipe) == "pixart" and type(pipe).__name__ == "PixArtSigmaPipeline"


@pytest.mark.parametrize("kind,model,allowed", [("lcd", "tiny-flux", "sd1, sd2, sdxl, unet, pixart, sd3")])
def test_finetunes_refuse_families_they_do_not_support_in_one_line(kind, model, allowed, capsys, tmp_path):
    out = tmp_path / "ckpt"
    assert main(["finetune", kind, "--variant", json.dumps({"model": model}), "--out", str(out),
                 "--minutes", "0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and model_family(load_pipeline(model)) in err and allowed in err
    assert not out.exists()


def test_shapes_dit_loads_as_a_pixart_model_the_judge_scores():
    from backend.models import EMBEDDED, has_shapes_judge

    if not (EMBEDDED["shapes-dit"][0] / "model_index.json").exists():
        pytest.skip("the embedded shapes-dit model is not in assets/ yet")
    pipe = load_pipeline("shapes-dit")
    assert model_family(pipe) == "pixart" and has_shapes_judge(pipe)
    from backend.world.train_dit import evaluate

    # a random image passes a hard prompt's judge < 20% of the time (test_metrics); shapes-dit, 0.78 on 100
    assert evaluate(EMBEDDED["shapes-dit"][0], 8, torch.device("cpu"))["prompt_accuracy"] >= 0.5


def test_workbench_knows_which_methods_knobs_and_choices_a_family_refuses():
    from backend.runs.knobs import MODELS, model_form

    assert {"tiny-pixart", "tiny-sd3", "tiny-flux"} <= set(MODELS)
    sd3, flux, unet = model_form("tiny-sd3"), model_form("tiny-flux"), model_form("tiny-arch")
    assert set(sd3.refused) == {"tome", "schedule"} and unet.refused == {}
    assert set(flux.refused) == {"consistency", "tome", "schedule"}
    assert "family 'flux'" in flux.refused["consistency"]
    assert sd3.hidden["deepcache"] == ("branch",) and set(unet.hidden["deepcache"]) == {"first_blocks", "last_blocks"}
    kind = next(p for p in method_config_class("diffusers_cache").describe() if p["name"] == "kind")
    assert sd3.allowed_choices("diffusers_cache", kind) == ["pab", "faster", "taylorseer", "magcache"]
    assert flux.allowed_choices("diffusers_cache", kind) == ["pab", "fbc", "taylorseer", "magcache"]
    assert unet.allowed_choices("diffusers_cache", kind) == ["pab"]
    assert sd3.choice_note("diffusers_cache", "kind").startswith("not fbc on sd3: FirstBlockCache's tail hook")
    assert sd3.choice_note("deepcache", "interval") == ""


def test_a_refused_choice_is_refused_before_anything_is_applied_and_left_out_of_the_search():
    from backend.methods.diffusers_cache import DiffusersCacheConfig
    from backend.tune.space import checkpoints, method_dimensions

    err = DiffusersCacheConfig(kind="fbc").family_refusal("sd3")
    assert err.startswith("diffusers_cache.kind: 'fbc' does not run on family 'sd3' (") and \
        err.endswith("allowed there: pab, faster, taylorseer, magcache")
    assert DiffusersCacheConfig(kind="fbc").family_refusal("flux") is None
    assert method_dimensions("sd3")["diffusers_cache"]["kind"] == ["pab", "faster", "taylorseer", "magcache"]
    assert method_dimensions("sd1")["diffusers_cache"]["kind"] == ["pab"]
    assert method_dimensions()["diffusers_cache"]["kind"] == ["pab", "fbc", "faster", "taylorseer", "magcache"]
    shipped = checkpoints("consistency")  # each shipped student is offered for the model it was made from only
    assert [p.rsplit("/", 1)[1] for p in shipped] == ["rg-lcm-lora", "rg-lcm-lora-dit"]
    assert checkpoints("consistency", model="shapes") == shipped[:1]
    assert checkpoints("consistency", model="shapes-dit") == shipped[1:]
    assert checkpoints("consistency", model="tiny-pixart") == []


def test_an_sd3_single_file_round_trips_and_draws_the_same_images(tmp_path):
    """tiny-sd3's transformer written in SD3's original layout loads back (diffusers' conversion) bit for bit."""
    from backend.single_file import to_single_file

    load_pipeline("tiny-sd3").save_pretrained(tmp_path / "sd3")
    path = to_single_file(tmp_path / "sd3", tmp_path / "sd3.safetensors")
    folder, single = load_pipeline(str(tmp_path / "sd3")), load_pipeline(str(path), config=str(tmp_path / "sd3"))
    assert type(single).__name__ == "StableDiffusion3Pipeline" and model_family(single) == "sd3"
    a, b = folder.transformer.state_dict(), single.transformer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    images, _ = _run({"model": str(path), "model_config": str(tmp_path / "sd3"), "deepcache": {"interval": 2}})
    expected, _ = _run({"model": str(tmp_path / "sd3"), "deepcache": {"interval": 2}})
    assert np.array_equal(images, expected)


def test_dit_single_file_refusals_are_one_line(tmp_path):
    from safetensors.torch import save_file

    from backend.core import ModelError
    from backend.single_file import to_single_file

    load_pipeline("tiny-sd3").save_pretrained(tmp_path / "sd3")
    load_pipeline("tiny-pixart").save_pretrained(tmp_path / "pixart")
    load_pipeline("tiny-flux").save_pretrained(tmp_path / "flux")
    path = to_single_file(tmp_path / "sd3", tmp_path / "sd3.safetensors")
    with pytest.raises(ModelError, match="is a PixArtSigmaPipeline folder but sd3.safetensors is a sd3 checkpoint"):
        load_pipeline(str(path), config=str(tmp_path / "pixart"))
    # diffusers' Flux conversion is written for the full-size 3072-wide model: a tiny Flux file cannot load
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(96, 32)}, tmp_path / "flux.safetensors")
    with pytest.raises(ModelError) as err:
        load_pipeline(str(tmp_path / "flux.safetensors"), config=str(tmp_path / "flux"))
    assert "as a FluxPipeline single file" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelError, match="not converted here"):
        to_single_file(tmp_path / "pixart", tmp_path / "pixart.safetensors")


def test_the_workbench_judges_shapes_dit_columns_and_not_random_weights():
    """A Playground column of shapes-dit carries the Shapes judge's verdict, as shapes-sd's does; a random-weight
    transformer (tiny-pixart) has nothing to judge."""
    from backend.models import EMBEDDED
    from backend.runs.compare import compare_columns

    if not (EMBEDDED["shapes-dit"][0] / "model_index.json").exists():
        pytest.skip("the embedded shapes-dit model is not in assets/ yet")
    prompt = "a small red circle in the center"
    dit = list(compare_columns(prompt, 0, [{"model": "shapes-dit", "steps": 10}]))[0]
    assert dit["prompt_accuracy"] in (0.0, 1.0) and set(dit["attr_accuracy"]) >= {"shape", "color"}
    tiny = list(compare_columns(prompt, 0, [{"model": "tiny-pixart", "steps": 2}]))[0]
    assert "prompt_accuracy" not in tiny
