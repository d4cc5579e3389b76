"""shapes-dit trainer: a tiny run end to end into a stock PixArt-Σ folder; the grounding recorder on PixArt."""

import json

import numpy as np
import pytest
import torch

from backend.world import train_dit
from backend.world.grounding import CrossAttentionRecorder


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("dit") / "run"
    train_dit.main(["--work", str(work), "--config", "tiny", "--minutes", "0.03", "--n-scenes", "128",
                    "--batch", "16", "--workers", "0", "--device", "cpu", "--eval-n", "2",
                    "--teacher", str(train_dit.SHAPES_SD), "--teacher-weight", "0.5"])
    return work


def test_tiny_run_exports_a_stock_pixart_sigma_folder_that_generates(tiny_run):
    from diffusers import PixArtSigmaPipeline

    report = json.loads((tiny_run / "shapes-dit.json").read_text())
    assert report["steps"] >= 1 and report["settings"]["config"] == "tiny"
    assert report["settings"]["teacher"] == str(train_dit.SHAPES_SD) and report["settings"]["teacher_weight"] == 0.5
    assert 0 <= report["eval"]["prompt_accuracy"] <= 1 and report["eval"]["n"] == 2
    folder = tiny_run / "shapes-dit"
    defaults = json.loads((folder / "speedlab.json").read_text())
    assert defaults["max_sequence_length"] == 16 and defaults["steps"] == 50
    pipe = PixArtSigmaPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a small red circle above a large blue square", num_inference_steps=2, height=64, width=64,
               generator=torch.Generator().manual_seed(0), output_type="np",
               **train_dit.call_kwargs(defaults["max_sequence_length"]))
    assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()


def test_the_exported_folder_generates_through_speedlab_as_the_stock_pipeline_does(tiny_run):
    """What the trainer writes in speedlab.json is what Speedlab's own generation reads (it once wrote a key the
    CLI ignored, and `evaluate` on the shipped model failed): the same image as the stock call."""
    from diffusers import PixArtSigmaPipeline

    from backend.models import load_pipeline
    from backend.sampling import generate
    from backend.variant import Variant

    folder = tiny_run / "shapes-dit"
    prompt = "a small red circle above a large blue square"
    ours = generate(load_pipeline(str(folder)), Variant(model=str(folder), steps=2), [prompt], [0])
    pipe = PixArtSigmaPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn((1, 4, 16, 16), generator=torch.Generator("cpu").manual_seed(0))
    stock = pipe(prompt, num_inference_steps=2, guidance_scale=5.0, height=64, width=64, latents=latents,
                 output_type="np", **train_dit.call_kwargs(16)).images
    np.testing.assert_allclose(ours, stock, atol=1e-5)


def test_ship_picks_a_finished_run_and_install_rebuilds_the_pipeline(tiny_run, tmp_path):
    from diffusers import PixArtSigmaPipeline

    train_dit.ship([tiny_run, tmp_path / "never-ran"], tmp_path / "ship")
    shipped = sorted(p.name for p in (tmp_path / "ship").iterdir())
    assert len(shipped) == len(train_dit.SHIPPED) + 1  # + runs.json: fits the trip home (≤ 8 files)
    train_dit.install(tmp_path / "ship", tmp_path / "shapes-dit", tmp_path / "docs")
    assert (tmp_path / "docs" / "dit-loss.csv").exists() and (tmp_path / "docs" / "shapes-dit.json").exists()
    a = PixArtSigmaPipeline.from_pretrained(tmp_path / "shapes-dit").transformer.state_dict()
    b = PixArtSigmaPipeline.from_pretrained(tiny_run / "shapes-dit").transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_the_teacher_sees_each_prompt_as_its_own_pipeline_encodes_it():
    """The U-Net teacher's text input (``unmasked``) is what StableDiffusionPipeline gives shapes-sd's U-Net."""
    from diffusers import StableDiffusionPipeline

    images = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    captions = ["a small red circle in the center", "a small purple square above a small yellow triangle"]
    data = train_dit.encode_pool(images, captions, torch.device("cpu"))
    pipe = StableDiffusionPipeline.from_pretrained(train_dit.SHAPES_SD)
    for i, caption in enumerate(captions):
        expected, _ = pipe.encode_prompt(caption, "cpu", 1, False)
        assert torch.allclose(data["unmasked"][data["caption"][i]], expected[0], atol=1e-5)
    assert train_dit.load_teacher(train_dit.SHAPES_SD, torch.device("cpu")).config.cross_attention_dim == 64


def test_a_folder_without_a_unet_is_no_teacher_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_dit.main(["--work", str(tmp_path / "w"), "--teacher", str(tmp_path)])
    assert e.value.code == 2 and "holds no unet/config.json" in capsys.readouterr().err
    assert not (tmp_path / "w" / "dit").exists()


def test_ship_without_a_finished_run_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_dit.main(["--ship", str(tmp_path / "out"), "--runs", str(tmp_path)])
    assert e.value.code == 2 and "no finished run" in capsys.readouterr().err


def test_recorder_on_pixart_keeps_the_output_and_gives_padding_no_attention():
    torch.manual_seed(0)
    model = train_dit.build_transformer("tiny").eval()
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([500, 20])
    text, mask = torch.randn(2, 16, 64), torch.zeros(2, 16)
    mask[0, :12], mask[1, :5] = 1, 1
    kwargs = {"encoder_hidden_states": text, "encoder_attention_mask": mask, "timestep": t,
              "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}
    with torch.no_grad():
        before = model(x, **kwargs).sample
        maps = CrossAttentionRecorder.install(model)
        after = model(x, **kwargs).sample
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    assert len(maps) == 2 and maps[0].shape[2] == 64  # one per block, over the 8×8 patches
    assert maps[0][0, :, :, 12:].max() < 1e-6 and maps[0][1, :, :, 5:].max() < 1e-6
