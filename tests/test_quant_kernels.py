"""Real int8 kernels: same integer codes as the simulated layers, per-step scales, memory, clear fallbacks;
on CPUs without VNNI (run here with ONEDNN_MAX_CPU_ISA=AVX2), 7-bit activations against int16 saturation."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from backend.metadata import pipeline_info
from backend.methods.quant import QuantConfig, apply
from backend.methods.quant.isa import cpu_isa, int8_support
from backend.methods.quant.kernels import Int8Layer, realize, resident_weight_mb, symmetric_int8, unavailable_reason
from backend.methods.quant.layers import QuantLayer, TimestepIndex, wrap_layer
from backend.methods.quant.model import get_state
from backend.metrics.quality import psnr_ssim
from backend.runs.build import build_pipeline
from backend.sampling import generate
from backend.variant import Variant

pytestmark = pytest.mark.skipif(bool(unavailable_reason("cpu")), reason=unavailable_reason("cpu") or "ok")
CALIB = {"calib_prompts": 2, "calib_steps": 3, "calib_samples": 4}
PROMPTS = ["a small red circle in the center", "a large blue square at the top left"]


def _layer(base, w_bits=8, a_bits=8, steps=(900, 500, 100)):
    index = TimestepIndex(list(steps))
    layer = wrap_layer(base, w_bits, a_bits, index)
    per_step = []
    for lo, hi in [(-1.0, 2.0), (-3.0, 3.0), (-0.5, 0.5)]:  # a different range per step
        layer.a_quant.set_range(lo, hi)  # (sets every step's entry)
        per_step.append((layer.a_quant.scale.data[0].clone(), layer.a_quant.zero_point.data[0].clone()))
    for i, (s, z) in enumerate(per_step):
        layer.a_quant.scale.data[i], layer.a_quant.zero_point.data[i] = s, z
    return layer.eval(), index


def _reduced_reference(layer: QuantLayer, x: torch.Tensor) -> torch.Tensor:
    """The simulated layer with its 8-bit input as 7-bit codes of the same range (step ×2): reduce_range."""
    s, z = layer.a_quant.step_params()
    s, z = 2 * s, min((int(torch.round(z)) + 1) // 2, 127)
    xq = (torch.clamp(torch.round(x / s) + z, 0, 127) - z) * s
    w, b = layer.weight(), layer.base_layer.bias
    return layer.base_layer._conv_forward(xq, w, b) if layer.is_conv else F.linear(xq, w, b)


@pytest.mark.parametrize("saturates", [None, True], ids=["this-cpu", "reduce_range"])
@pytest.mark.parametrize("bits", [(8, 8), (4, 8), (4, 4)])
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_int8_layer_matches_simulated_at_every_step(bits, kind, saturates):
    torch.manual_seed(0)
    base = torch.nn.Conv2d(8, 16, 3, padding=1) if kind == "conv" else torch.nn.Linear(8, 16)
    layer, index = _layer(base, *bits)
    real = Int8Layer(layer, saturates)
    # only 8-bit activations × 8-bit weight codes can overflow an int16 pair sum (2·255·127 > 32767)
    assert real.reduce_range == (bits == (8, 8) and (saturates or int8_support().saturates))
    x = torch.randn(2, 8, 6, 6) * 1.5 if kind == "conv" else torch.randn(2, 5, 8) * 1.5
    for t in (900, 500, 100):
        index.set_timestep(t)
        with torch.no_grad():
            ref, out = layer(x), real(x)
            want = _reduced_reference(layer, x) if real.reduce_range else ref
        if real.requantized == 0:  # same codes: equal up to fp32 summation order
            torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-4)
        else:
            assert float((out - want).norm() / want.norm()) < 0.01
        if real.reduce_range:  # one activation bit coarser than simulated: measured 0.5–1.2%
            assert float((out - ref).norm() / ref.norm()) < 0.02
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


@pytest.fixture(scope="module")
def w8a8_checkpoint(tmp_path_factory):
    """A PTQ W8A8 checkpoint of tiny-arch (one calibration for the tests that compare kernels)."""
    from backend.methods.quant import ptq
    from backend.methods.quant.checkpoint import save_checkpoint
    from backend.models import load_pipeline

    pipe = copy.copy(load_pipeline("tiny-arch"))
    pipe.unet = copy.deepcopy(pipe.unet)
    ptq(pipe, QuantConfig.from_dict({**CALIB, "weight_bits": 8, "act_bits": 8}))
    return str(save_checkpoint(pipe.unet, tmp_path_factory.mktemp("w8a8") / "ckpt"))


def test_real_pipeline_matches_simulated_images(w8a8_checkpoint):
    sim = Variant.from_dict({"model": "tiny-arch", "steps": 4, "quant": {"checkpoint": w8a8_checkpoint}})
    real = Variant.from_dict({**sim.to_dict(), "quant": {"checkpoint": w8a8_checkpoint, "kernels": "real"}})
    p_sim, p_real = build_pipeline(sim), build_pipeline(real)
    support = int8_support()
    tag = ", reduce_range" if support.saturates else ""
    assert pipeline_info(p_real).kernels.startswith(f"real int8 kernels (oneDNN, {support.isa.name}{tag}) on ")
    assert pipeline_info(p_sim).kernels == "simulated kernels (fake quantization)"
    layers = [m for m in p_real.unet.modules() if isinstance(m, Int8Layer)]
    assert len(layers) == len(get_state(p_real.unet).layers)
    assert all(m.reduce_range == support.saturates for m in layers)
    a = generate(p_sim, sim, PROMPTS, [0, 1])
    b = generate(p_real, real, PROMPTS, [0, 1])
    psnr, _ = psnr_ssim(a, b)
    # the same codes differ only by fp32 summation order, which this random-weight net amplifies (measured
    # 40.8 dB); reduce_range's coarser activations are a real gap, not hidden (measured 32.4 dB, AVX2)
    assert psnr > (30 if support.saturates else 35)
    fp = resident_weight_mb(build_pipeline(Variant.from_dict({"model": "tiny-arch"})).unet)
    assert resident_weight_mb(p_real.unet) < 0.5 * fp


def test_reduce_range_on_and_off(w8a8_checkpoint, caplog):
    sim = Variant.from_dict({"model": "tiny-arch", "quant": {"checkpoint": w8a8_checkpoint}})
    ref_unet = build_pipeline(sim).unet
    x = torch.randn(2, ref_unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 7, ref_unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = ref_unet(x, 500, encoder_hidden_states=text).sample
    error = {}
    for on in (False, True):
        unet = build_pipeline(sim).unet
        caplog.clear()
        with caplog.at_level("INFO", logger="backend.methods.quant.kernels"):
            report = realize(unet, "real", reduce_range=on)
        assert bool(report.reduce_range) == on and ("reduce_range" in report.summary()) == on
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert warned == ([f"note: {report.notes[-1]}"] if on else [])  # the user sees why outputs differ
        assert any(r.getMessage() == report.summary() for r in caplog.records if r.levelname == "INFO")
        with torch.no_grad():
            out = unet(x, 500, encoder_hidden_states=text).sample
        error[on] = float((out - ref).norm() / ref.norm())
    # one forward of this random-weight net, relative to simulated W8A8 (measured): same codes 0.2%
    # (fp32 summation order); reduce_range 12.1% on both ISAs; full range with saturating int16 sums 26%
    if int8_support().saturates:
        assert error[False] > error[True]
    else:
        assert error[False] < 0.01 < error[True] < 0.2


def test_real_kernels_count_the_same_macs_as_fp32(w8a8_checkpoint):
    from backend.metrics.cost import count_macs
    from backend.models import load_pipeline

    fp = load_pipeline("tiny-arch").unet
    real = build_pipeline(Variant.from_dict({"model": "tiny-arch", "quant": {"checkpoint": w8a8_checkpoint,
                                                                            "kernels": "real"}})).unet
    x = torch.randn(2, fp.config.in_channels, 8, 8)
    text = torch.randn(2, 7, fp.config.cross_attention_dim)
    macs = []
    for unet in (fp, real):
        with torch.no_grad():
            macs.append(count_macs(lambda unet=unet: unet(x, 500, encoder_hidden_states=text)))
    assert macs[0] > 0 and macs[1] == macs[0]


def test_real_kernels_fall_back_loudly_off_cpu(tiny_pipe, monkeypatch, caplog, capsys):
    from backend.methods.quant import kernels

    monkeypatch.setattr(kernels, "unavailable_reason", lambda device: "no integer kernels on this test device")
    pipe = copy.copy(tiny_pipe)
    with caplog.at_level("WARNING", logger="backend.methods.quant.kernels"):
        apply(pipe, QuantConfig.from_dict({**CALIB, "kernels": "real"}))
    assert "simulated kernels (real kernels asked for, but no integer kernels" in pipeline_info(pipe).kernels
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and warned[0].getMessage().startswith("note: simulated kernels (real kernels asked for")
    assert capsys.readouterr().err == ""  # logged, not printed
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
    quantized = [m.base_layer.weight for m in get_state(p_real.unet).layers.values()]
    assert quantized and all(w.is_meta for w in quantized)  # never copied in fp32
    assert fingerprint(base.unet) == before  # the shared base is untouched
    a = generate(build_pipeline(sim), sim, PROMPTS, [0, 1])
    b = generate(p_real, real, PROMPTS, [0, 1])
    # W4 body layers run exactly (|codes| ≤ 15 cannot saturate); the 8-bit first / last / time-embedding
    # layers take reduce_range where int8 sums saturate: measured 45.0 dB exact, 32.5 dB with reduce_range (AVX2)
    assert psnr_ssim(a, b)[0] > (30 if int8_support().saturates else 40)


def test_summary_names_the_kernel_of_every_layer(tiny_pipe):
    from backend.methods.quant import summary

    pipe = copy.copy(tiny_pipe)
    apply(pipe, QuantConfig.from_dict({**CALIB, "kernels": "real", "quantize_attn_matmul": True}))
    text = summary(pipe.unet)
    assert "int8 oneDNN" in text and "simulated: QKᵀ and softmax·V" in text
    assert f"real int8 kernels (oneDNN, {int8_support().isa.name}" in text.splitlines()[-1]


def test_another_models_checkpoint_on_real_kernels_is_a_clear_error(tmp_path, tiny_pipe, shapes_available):
    from backend.methods.quant import ptq
    from backend.methods.quant.checkpoint import CheckpointError, save_checkpoint

    pipe = copy.copy(tiny_pipe)
    ptq(pipe, QuantConfig.from_dict(CALIB))
    ckpt = save_checkpoint(pipe.unet, tmp_path / "tiny")
    variant = Variant.from_dict({"model": "shapes", "quant": {"checkpoint": str(ckpt), "kernels": "real"}})
    with pytest.raises(CheckpointError, match="was made from model"):
        build_pipeline(variant)


SPR = {"sse4_1", "avx2", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "amx_int8",
       "amx_tile"}  # Sapphire Rapids


@pytest.mark.parametrize("flags, cap, name, vnni, capped", [
    ({"sse4_1", "avx2"}, "", "avx2", False, ""),  # AMD EPYC (Zen 2/3): AVX2 only
    (SPR - {"amx_int8", "amx_tile", "avx_vnni"}, "", "avx512_vnni", True, ""),  # Ice Lake / Cascade Lake
    (SPR - {"amx_int8", "amx_tile", "avx_vnni", "avx512_vnni"}, "", "avx512", False, ""),  # Skylake-SP
    ({"sse4_1", "avx2", "avx_vnni"}, "", "avx2_vnni", True, ""),  # Alder Lake
    (SPR, "", "amx", True, ""), (SPR, "AVX2", "avx2", False, "AVX2"),
    (SPR, "avx512_core", "avx512", False, "AVX512_CORE"),
    (SPR, "AVX512_CORE_VNNI", "avx512_vnni", True, "AVX512_CORE_VNNI"), (SPR, "ALL", "amx", True, ""),
    ({"sse4_1", "avx2"}, "AVX512_CORE_AMX", "avx2", False, ""),  # a cap above the CPU changes nothing
])
def test_cpu_isa_reads_flags_and_the_onednn_cap(flags, cap, name, vnni, capped):
    isa = cpu_isa(flags, cap)
    assert (isa.name, isa.vnni, isa.cap) == (name, vnni, capped)


def test_self_test_finds_saturation_where_the_isa_has_no_vnni():
    support = int8_support()
    if support.isa.name not in ("amx", "avx512_vnni", "avx2_vnni", "avx512", "avx2"):
        pytest.skip(f"not an x86 ISA with int8 kernels: {support.isa.name}")
    assert support.saturates == (not support.isa.vnni)


@pytest.mark.skipif(bool(os.environ.get("ONEDNN_MAX_CPU_ISA")), reason="already running under an ISA cap")
@pytest.mark.skipif(cpu_isa(cap="AVX2").name != "avx2", reason="needs an x86 CPU with AVX2")
def test_on_avx2_without_vnni(tmp_path):
    """The checks above again with oneDNN capped at AVX2 (as on an AVX2-only AMD EPYC): the self-test must
    find the saturation and the real layers and images must match with reduce_range (read at oneDNN's
    first use, so the cap needs a fresh process)."""
    tests = ["test_int8_layer_matches_simulated_at_every_step", "test_real_pipeline_matches_simulated_images",
             "test_checkpoint_on_real_kernels_without_an_fp32_copy", "test_self_test_finds_saturation",
             "test_real_kernels_count_the_same_macs_as_fp32", "test_reduce_range_on_and_off"]
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ONEDNN_VERBOSE": "0"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-rA", __file__, "-k", " or ".join(tests),
                           f"--basetemp={tmp_path}"], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], timeout=300)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    assert " passed" in tail and " failed" not in tail and "skipped" not in tail, tail
