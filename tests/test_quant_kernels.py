"""Real int8 kernels: same integer codes as the simulated layers, per-step scales, memory, clear fallbacks."""

import copy

import pytest
import torch

from backend.methods.quant import QuantConfig, apply
from backend.methods.quant.kernels import Int8Layer, realize, resident_weight_mb, symmetric_int8, unavailable_reason
from backend.methods.quant.layers import QuantLayer, TimestepIndex
from backend.methods.quant.model import get_state
from backend.metrics.quality import psnr_ssim
from backend.runs.build import build_pipeline, generate
from backend.runs.variant import Variant

pytestmark = pytest.mark.skipif(bool(unavailable_reason("cpu")), reason=unavailable_reason("cpu") or "ok")
CALIB = {"calib_prompts": 2, "calib_steps": 3, "calib_samples": 4}
PROMPTS = ["a small red circle in the center", "a large blue square at the top left"]


def _layer(base, w_bits=8, a_bits=8, steps=(900, 500, 100)):
    index = TimestepIndex(list(steps))
    layer = QuantLayer(base, w_bits, a_bits, index)
    for i, (lo, hi) in enumerate([(-1.0, 2.0), (-3.0, 3.0), (-0.5, 0.5)]):  # a different range per step
        layer.a_quant.set_range(lo, hi)
        s, z = layer.a_quant.scale.data[0].clone(), layer.a_quant.zero_point.data[0].clone()
        layer.a_quant.scale.data[i], layer.a_quant.zero_point.data[i] = s, z
    return layer.eval(), index


@pytest.mark.parametrize("bits", [(8, 8), (4, 8), (4, 4)])
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_int8_layer_matches_simulated_at_every_step(bits, kind):
    torch.manual_seed(0)
    base = torch.nn.Conv2d(8, 16, 3, padding=1) if kind == "conv" else torch.nn.Linear(8, 16)
    layer, index = _layer(base, *bits)
    real = Int8Layer(layer)
    x = torch.randn(2, 8, 6, 6) * 1.5 if kind == "conv" else torch.randn(2, 5, 8) * 1.5
    for t in (900, 500, 100):
        index.set_timestep(t)
        with torch.no_grad():
            ref, out = layer(x), real(x)
        if real.requantized == 0:  # same codes: equal up to fp32 summation order
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
        else:
            assert float((out - ref).norm() / ref.norm()) < 0.01
    assert real.weight_bytes == base.weight.numel()


def test_symmetric_int8_is_exact_where_codes_fit():
    codes = torch.tensor([[0.0, 255.0], [0.0, 15.0], [200.0, 255.0]])
    zero = torch.tensor([128.0, 8.0, 0.0])
    scale = torch.tensor([0.1, 0.2, 0.01])
    q, s, requantized = symmetric_int8(codes, zero, scale)
    assert requantized == 1  # the third channel's codes − zero exceed 127
    assert torch.equal(q[:2].float(), codes[:2] - zero[:2, None]) and torch.equal(s[:2], scale[:2])
    want = (codes[2] - zero[2]) * scale[2]
    assert torch.allclose(q[2].float() * s[2], want, atol=float(s[2]) / 2 + 1e-7)


def test_real_pipeline_matches_simulated_images(tiny_pipe):
    sim = Variant.from_dict({"model": "tiny-arch", "steps": 4, "quant": {**CALIB, "weight_bits": 8, "act_bits": 8}})
    real = Variant.from_dict({**sim.to_dict(), "quant": {**sim.to_dict()["quant"], "kernels": "real"}})
    p_sim, p_real = build_pipeline(sim), build_pipeline(real)
    assert p_real.speedlab_kernels.startswith("real int8 kernels")
    assert p_sim.speedlab_kernels == "simulated kernels (fake quantization)"
    layers = [m for m in p_real.unet.modules() if isinstance(m, Int8Layer)]
    assert len(layers) == len(get_state(p_real.unet).layers)
    a = generate(p_sim, sim, PROMPTS, [0, 1])
    b = generate(p_real, real, PROMPTS, [0, 1])
    psnr, _ = psnr_ssim(a, b)
    assert psnr > 35
    fp = resident_weight_mb(build_pipeline(Variant.from_dict({"model": "tiny-arch"})).unet)
    assert resident_weight_mb(p_real.unet) < 0.5 * fp


def test_real_kernels_fall_back_loudly_off_cpu(tiny_pipe, monkeypatch, capsys):
    from backend.methods.quant import kernels

    monkeypatch.setattr(kernels, "unavailable_reason", lambda device: "no integer kernels on this test device")
    pipe = copy.copy(tiny_pipe)
    apply(pipe, QuantConfig.from_dict({**CALIB, "kernels": "real"}))
    assert "simulated kernels (real kernels asked for, but no integer kernels" in pipe.speedlab_kernels
    assert "note: simulated kernels" in capsys.readouterr().err
    assert not any(isinstance(m, Int8Layer) for m in pipe.unet.modules())


def test_bad_kernels_value():
    with pytest.raises(ValueError, match="kernels"):
        QuantConfig.from_dict({"kernels": "fast"})
    with pytest.raises(ValueError, match="not quantized"):
        realize(torch.nn.Conv2d(2, 2, 1))


def test_cuda_is_reported_not_silent():
    assert "CPU" in unavailable_reason("cuda")


def test_checkpoint_on_real_kernels_without_an_fp32_copy(tmp_path):
    from backend.methods.quant import ptq
    from backend.methods.quant.checkpoint import save_checkpoint
    from backend.methods.quant.model import fingerprint
    from backend.models import load_pipeline

    base = load_pipeline("tiny-arch")
    before = fingerprint(base.unet)
    pipe = copy.copy(base)
    pipe.unet = copy.deepcopy(base.unet)
    ptq(pipe, QuantConfig.from_dict({**CALIB, "weight_bits": 4, "act_bits": 8}))
    ckpt = save_checkpoint(pipe.unet, tmp_path / "w4a8")
    sim = Variant.from_dict({"model": "tiny-arch", "steps": 3, "quant": {"checkpoint": str(ckpt)}})
    real = Variant.from_dict({**sim.to_dict(), "quant": {"checkpoint": str(ckpt), "kernels": "real"}})
    p_real = build_pipeline(real)
    quantized = [m.base.weight for m in get_state(p_real.unet).layers.values()]
    assert quantized and all(w.is_meta for w in quantized)  # never copied in fp32
    assert fingerprint(base.unet) == before  # the shared base is untouched
    a = generate(build_pipeline(sim), sim, PROMPTS, [0, 1])
    b = generate(p_real, real, PROMPTS, [0, 1])
    assert psnr_ssim(a, b)[0] > 40


def test_summary_names_the_kernel_of_every_layer(tiny_pipe):
    from backend.methods.quant import summary

    pipe = copy.copy(tiny_pipe)
    apply(pipe, QuantConfig.from_dict({**CALIB, "kernels": "real", "quantize_attn_matmul": True}))
    text = summary(pipe.unet)
    assert "int8 oneDNN" in text and "simulated: QKᵀ and softmax·V" in text
    assert "real int8 kernels (oneDNN) on" in text.splitlines()[-1]


def test_another_models_checkpoint_on_real_kernels_is_a_clear_error(tmp_path, tiny_pipe, shapes_available):
    from backend.methods.quant import ptq
    from backend.methods.quant.checkpoint import CheckpointError, save_checkpoint

    pipe = copy.copy(tiny_pipe)
    ptq(pipe, QuantConfig.from_dict(CALIB))
    ckpt = save_checkpoint(pipe.unet, tmp_path / "tiny")
    variant = Variant.from_dict({"model": "shapes", "quant": {"checkpoint": str(ckpt), "kernels": "real"}})
    with pytest.raises(CheckpointError, match="was made for model"):
        build_pipeline(variant)
