"""The Shapes world, Variant parsing, model loading and the CLI's bad-input contract."""

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from backend.variant import Variant, VariantError
from backend.world.prompts import PROMPT_SETS, parse_caption, prompt_set
from backend.world.shapes import HELD_OUT_PAIRS, random_scene, sample_batch


def test_generator_is_deterministic():
    a, sa = sample_batch(8, seed=5)
    b, sb = sample_batch(8, seed=5)
    c, _ = sample_batch(8, seed=6)
    assert a.shape == (8, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and [s.caption for s in sa] == [s.caption for s in sb]
    assert not np.array_equal(a, c)


def test_prompt_sets_and_compositional_split():
    for name in PROMPT_SETS:
        scenes = prompt_set(name)
        assert len(scenes) >= 250 and len({s.caption for s in scenes}) == len(scenes)
    assert all(len(s.objects) == 1 for s in prompt_set("single"))
    assert all(len(s.objects) == 2 for s in prompt_set("two"))
    pairs = lambda s: {(o.shape, o.color) for o in s.objects}  # noqa: E731
    assert all(pairs(s) & HELD_OUT_PAIRS for s in prompt_set("compositional"))
    rng = random.Random(0)
    assert not any(pairs(random_scene(rng)) & HELD_OUT_PAIRS for _ in range(2000))


def test_captions_round_trip():
    for scene in prompt_set("two")[:20] + prompt_set("single")[:20]:
        assert parse_caption(scene.caption) == scene
    assert parse_caption("a small red triangle to the left of a large blue circle").relation == "to the left of"
    with pytest.raises(ValueError):
        parse_caption("a photo of a cat")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('{"steps": 0}', "steps"),
        ('{"guidance": -1}', "guidance"),
        ('{"stepz": 3}', "unknown variant key 'stepz'"),
        ('{"scheduler": "heun"}', "allowed: ddim"),
        ("{not json", "malformed variant JSON"),
        ('{"height": "64"}', "height"),
    ],
)
def test_bad_variants(text, fragment):
    with pytest.raises(VariantError, match=fragment):
        Variant.parse(text)


def test_variant_round_trip(tmp_path):
    v = Variant.parse('{"model": "shapes", "steps": 25, "guidance": 4.0}')
    path = tmp_path / "v.json"
    path.write_text(json.dumps(v.to_dict()))
    assert Variant.parse(str(path)) == v


def test_tiny_generation_size_and_seed(tiny_pipe):
    from backend.sampling import generate

    v = Variant.from_dict({"model": "tiny-arch", "steps": 4})
    a = generate(tiny_pipe, v, ["a red circle", "a blue square"], [1, 2])
    b = generate(tiny_pipe, v, ["a red circle"], [1])
    assert a.shape == (2, 32, 32, 3) and 0 <= a.min() and a.max() <= 1
    assert np.abs(a[0] - b[0]).max() < 1e-4


def test_execution_device_is_the_unets_unless_offloaded(tiny_pipe, monkeypatch):
    """load_pipeline skips diffusers' per-call module walk for the device, but not when offload hooks exist."""
    from diffusers import StableDiffusionPipeline

    assert isinstance(tiny_pipe, StableDiffusionPipeline) and type(tiny_pipe).__name__ == "StableDiffusionPipeline"
    def no_walk(module):
        raise AssertionError("diffusers' per-call module walk ran")

    monkeypatch.setattr("diffusers.hooks.group_offloading._get_group_onload_device", no_walk)
    assert tiny_pipe._execution_device == torch.device("cpu")
    monkeypatch.undo()
    hook = type("Hook", (), {"execution_device": "meta"})()
    modules = [m for m in tiny_pipe.components.values() if isinstance(m, torch.nn.Module)]
    for m in modules:
        m._hf_hook = hook
    try:  # accelerate offload hooks on the components: diffusers' own search answers
        assert tiny_pipe._execution_device == torch.device("meta")
    finally:
        for m in modules:
            del m._hf_hook


def test_stochastic_sampler_noise_follows_the_seed(tiny_pipe):
    """Multi-step LCM re-noises between steps: that noise must come from the image's seed too."""
    from diffusers import LCMScheduler

    from backend.sampling import generate

    tiny_pipe.scheduler = LCMScheduler.from_config(tiny_pipe.scheduler.config)
    v = Variant.from_dict({"model": "tiny-arch", "scheduler": "lcm", "steps": 4})
    a = generate(tiny_pipe, v, ["a red circle", "a blue square"], [1, 2])
    b = generate(tiny_pipe, v, ["a red circle", "a blue square"], [1, 2])
    c = generate(tiny_pipe, v, ["a red circle"], [1])
    assert np.array_equal(a, b) and np.abs(a[0] - c[0]).max() < 1e-4


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "backend", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["generate", "--variant", '{"model": "no-such-model"}', "--prompt", "a", "--out", "x.png"], "unknown model"),
        (["generate", "--variant", '{"model": "tiny-arch"}', "--prompt", " ", "--out", "x.png"], "empty"),
        (["generate", "--variant", '{"model": "tiny-arch", "width": 20}', "--prompt", "a", "--out", "x.png"],
         "multiple of"),
        (["generate", "--variant", '{"model": "tiny-arch", "steps": -1}', "--prompt", "a", "--out", "x.png"],
         "steps"),
        (["evaluate", "--variant", '{"model": "sd15-arch"}', "--n", "2"], "random weights"),
        (["evaluate", "--variant", '{"model": "/tmp"}', "--n", "2"], "not a diffusers pipeline"),
    ],
)
def test_cli_bad_input_exits_2(args, fragment, tmp_path, monkeypatch, capsys):
    from backend.__main__ import main

    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.strip().splitlines()[-1].startswith("error:")
    assert not (tmp_path / "x.png").exists()


def test_cli_bad_input_has_no_traceback():
    proc = _cli("generate", "--variant", "{oops", "--prompt", "a", "--out", "x.png")
    assert proc.returncode == 2 and "malformed variant JSON" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_generate_writes_png(tmp_path):
    out = tmp_path / "img.png"
    proc = _cli("generate", "--variant", '{"model": "tiny-arch", "steps": 2}', "--prompt", "a red circle",
                "--seed", "3", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["seed"] == 3 and out.stat().st_size > 0
