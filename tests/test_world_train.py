"""The shapes-sd training stages that touch a shipped model must keep it consistent."""

import torch
from safetensors.torch import load_file

from backend.world import train
from backend.world.train import ASSETS


def test_decoder_stage_changes_only_the_decoder(tmp_path):
    shipped = load_file(ASSETS / "shapes-sd" / "vae" / "diffusion_pytorch_model.safetensors")
    torch.manual_seed(0)
    train.train_decoder(tmp_path, minutes=0.05, object_weight=4.0)
    tuned = load_file(tmp_path / "decoder" / "vae.safetensors")
    frozen = [k for k in shipped if k.startswith(("encoder.", "quant_conv."))]
    trained = [k for k in shipped if k.startswith(("decoder.", "post_quant_conv."))]
    assert frozen and trained and len(frozen) + len(trained) == len(shipped)
    assert all(torch.equal(tuned[k], shipped[k].float()) for k in frozen)  # latents (and the U-Net) stay valid
    assert any(not torch.equal(tuned[k], shipped[k].float()) for k in trained)
    loaded = train._load_vae(tmp_path).state_dict()  # later stages (export) pick the fine-tuned decoder up
    assert all(torch.equal(loaded[k], tuned[k]) for k in trained)
    assert (tmp_path / "decoder" / "loss.csv").exists()
