"""Fake-quant numerics, packing, STE gradients, TALSQ indexing, the peft-style QALoRA layer (base_layer, merge /
unmerge, old state names), the layer-type dispatcher and bad input (no pipeline sampling)."""

import pytest
import torch
from torch import nn

from backend.methods.quant import QuantConfig
from backend.methods.quant.checkpoint import pack, unpack
from backend.methods.quant.layers import (
    QUANT_LAYERS,
    ActQuantizer,
    QuantConv2d,
    QuantLayer,
    QuantLinear,
    TimestepIndex,
    WeightQuantizer,
    quant_layer_class,
    rename_legacy_keys,
    wrap_layer,
)
from backend.methods.quant.model import get_state, layer_role, quantize_unet, remove, resample_timesteps, summary


@pytest.mark.parametrize("bits", range(2, 9))
def test_weight_quant_levels_and_error(bits):
    torch.manual_seed(0)
    w = torch.randn(6, 5, 3, 3)
    q = WeightQuantizer(6, bits)
    q.init_minmax(w)
    codes = q.integers(w)
    assert torch.equal(codes, codes.round()) and codes.min() >= 0 and codes.max() <= 2 ** bits - 1
    for c in range(6):
        assert codes[c].unique().numel() <= 2 ** bits
    err = float((q(w) - w).detach().abs().max())
    assert err <= float(q.scale.detach().max()) / 2 + 1e-6  # min/max range: no clipping, at most half a step


@pytest.mark.parametrize("shape", [(8, 4, 3, 3), (16, 7)])
def test_lean_weight_fake_quant_equals_autograd_of_the_expression(shape):
    """The memory-lean fake quantizer gives, bit for bit, the value and gradients (clamped weights included)
    that autograd gives the plain expression dequantize(integers(w))."""
    torch.manual_seed(0)
    q = WeightQuantizer(shape[0], 3)
    q.init_minmax(torch.randn(*shape))
    with torch.no_grad():
        q.scale.mul_(0.8)  # a narrower range: some weights clamp
    w = torch.randn(*shape, requires_grad=True)
    grad = torch.randn(*shape)
    out = q(w)
    out.backward(grad)
    lean = out.detach(), w.grad.clone(), q.scale.grad.clone()
    w.grad, q.scale.grad = None, None
    ref = q.dequantize(q.integers(w))
    ref.backward(grad)
    assert torch.equal(lean[0], ref.detach()) and torch.equal(lean[1], w.grad) and torch.equal(lean[2], q.scale.grad)
    assert (lean[1] == 0).any()  # the clamp mask took part


def test_eight_bit_is_close_to_fp():
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    layer = wrap_layer(lin, 8, 8, None)
    x = torch.randn(64, 32)
    layer.a_quant.calibrate(x)
    ref = lin(x)
    rel = float((layer(x) - ref).detach().norm() / ref.detach().norm())
    assert rel < 0.01
    layer4 = wrap_layer(lin, 4, 4, None)
    layer4.a_quant.calibrate(x)
    assert float((layer4(x) - ref).detach().norm() / ref.detach().norm()) > rel


@pytest.mark.parametrize("bits", range(2, 9))
def test_pack_round_trip(bits):
    codes = torch.randint(0, 2 ** bits, (7, 3, 3))  # odd count: padding
    packed = pack(codes, bits)
    per = 4 if bits <= 2 else 2 if bits <= 4 else 1
    assert packed.dtype == torch.uint8 and packed.numel() == -(-codes.numel() // per)
    assert torch.equal(unpack(packed, bits, codes.numel()).view(codes.shape).long(), codes)


def test_ste_gradients_reach_lora_and_step_sizes():
    torch.manual_seed(0)
    index = TimestepIndex([801, 401, 1])
    layer = wrap_layer(nn.Conv2d(4, 8, 3, padding=1), 4, 4, index)
    layer.a_quant.calibrate(torch.randn(2, 4, 6, 6))
    layer.a_quant.resize(3)
    layer.add_lora(4)
    assert layer.lora_rank == 4 and float(layer.lora_B.abs().sum()) == 0
    index.set_timestep(401)
    layer(torch.randn(2, 4, 6, 6)).pow(2).sum().backward()
    assert layer.lora_B.grad is not None and float(layer.lora_B.grad.abs().sum()) > 0
    g = layer.a_quant.scale.grad
    assert float(g[1].abs()) > 0 and float(g[0]) == 0 and float(g[2]) == 0  # only the current step learns
    layer.zero_grad()
    layer.lora_B.data.normal_()
    layer(torch.randn(2, 4, 6, 6)).sum().backward()
    assert float(layer.lora_A.grad.abs().sum()) > 0
    # W0 sits on the grid, so the LSQ step-size gradient appears once BA moves W off it
    assert float(layer.w_quant.scale.grad.abs().sum()) > 0


def test_timestep_index_follows_the_map_not_calls():
    index = TimestepIndex([901, 601, 301, 1])
    assert index.set_timestep(torch.tensor(601)) == 1
    assert index.set_timestep(torch.tensor(601)) == 1  # a second call does not advance
    assert index.set_timestep(torch.tensor([1, 1, 1])) == 3
    assert index.set_timestep(580) == 1  # another schedule's timestep: the nearest mapped one
    with pytest.raises(ValueError, match="one timestep"):
        index.set_timestep(torch.tensor([901, 1]))


def test_act_table_selected_by_step():
    index = TimestepIndex([900, 500, 100])
    q = ActQuantizer(4, index)
    q.resize(3)
    with torch.no_grad():
        q.scale.copy_(torch.tensor([0.5, 0.1, 0.01]))
        q.zero_point.fill_(8)
    x = torch.linspace(-1, 1, 50)
    index.set_timestep(500)
    assert torch.allclose(q(x), torch.clamp(torch.round(x / 0.1) + 8, 0, 15).sub(8) * 0.1)
    index.set_timestep(100)
    assert float(q(x).abs().max()) <= 0.08 + 1e-6


def test_unet_hook_sets_index_and_resampling(tiny_pipe):
    unet = tiny_pipe.unet
    import copy

    unet = copy.deepcopy(unet)
    state = quantize_unet(unet, QuantConfig.from_dict({"weight_bits": 4, "act_bits": 4}))
    state.set_timesteps([901, 601, 301, 1])
    name, layer = next((n, m) for n, m in state.layers.items() if m.a_quant.temporal)
    with torch.no_grad():
        layer.a_quant.scale.copy_(torch.tensor([4.0, 3.0, 2.0, 1.0]))
    x, e = torch.randn(1, 4, 8, 8), torch.randn(1, 16, 16)
    with torch.no_grad():
        unet(x, torch.tensor(301), encoder_hidden_states=e)
        assert state.index.current == 2
        unet(x, 901, encoder_hidden_states=e)
        assert state.index.current == 0
    resample_timesteps(state, [901, 751, 601, 451, 301, 151, 1])
    assert len(state.index) == 7 and layer.a_quant.scale.numel() == 7
    assert torch.allclose(layer.a_quant.scale.detach(), torch.tensor([4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0]))
    with torch.no_grad():
        unet(x, torch.tensor(151), encoder_hidden_states=e)
    assert state.index.current == 5
    text = summary(unet)
    assert "conv_in" in text and "int8/channel" in text and "int4/channel" in text
    remove(unet)
    assert get_state(unet) is None and not any(isinstance(m, QuantLayer) for m in unet.modules())


def test_layer_policy_roles(tiny_pipe):
    import copy

    assert layer_role("conv_in") == "first_last" and layer_role("time_embedding.linear_1") == "time_embed"
    assert layer_role("down_blocks.0.resnets.0.conv_shortcut") == "skip"
    assert layer_role("down_blocks.0.downsamplers.0.conv") == "downsample"
    cfg = QuantConfig.from_dict({"weight_bits": 4, "act_bits": 4, "quantize_skip": "fp", "quantize_downsample": "same",
                                 "quantize_attn_matmul": True})
    state = quantize_unet(copy.deepcopy(tiny_pipe.unet), cfg)
    assert all("conv_shortcut" in n for n in state.fp_layers) and state.fp_layers
    assert state.layers["conv_in"].w_quant.bits == 8 and not state.layers["conv_in"].a_quant.temporal
    down = next(m for n, m in state.layers.items() if ".downsamplers." in n)
    assert down.w_quant.bits == 4 and state.attn


@pytest.mark.parametrize("bad", [{"weight_bits": 9}, {"act_bits": 1}, {"weight_bits": 4.5}, {"method": "gptq"},
                                 {"method": "efficientdm"}, {"checkpoint": 3}])
def test_bad_config(bad):
    with pytest.raises(ValueError):
        QuantConfig.from_dict(bad)


def test_bad_bits_and_no_quantizable_layers():
    with pytest.raises(ValueError, match="2 to 8"):
        WeightQuantizer(3, 1)
    with pytest.raises(ValueError, match="2 to 8"):
        ActQuantizer(9)
    with pytest.raises(ValueError, match="no quantizable layers"):
        quantize_unet(nn.Sequential(nn.ReLU(), nn.GroupNorm(1, 4)), QuantConfig())


def _lora_conv(seed: int = 0) -> QuantLayer:
    """A W4A4 conv wrapper with a rank-3 LoRA whose B is non-zero (so ΔW ≠ 0)."""
    torch.manual_seed(seed)
    layer = wrap_layer(nn.Conv2d(4, 8, 3, padding=1).requires_grad_(False), 4, 4, None)  # frozen, as in training
    layer.a_quant.calibrate(torch.randn(2, 4, 6, 6))
    layer.add_lora(3)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.05)
    return layer.eval()


def test_peft_style_names():
    conv = nn.Conv2d(4, 8, 3, padding=1)
    layer = wrap_layer(conv, 4, 4, None)
    assert layer.base_layer is conv and layer.lora_A is None and layer.scaling == 1.0
    layer.add_lora(3)
    keys = set(layer.state_dict())
    assert {"base_layer.weight", "base_layer.bias", "lora_A", "lora_B", "w0"} <= keys
    assert not any(k.startswith("base.") for k in keys) and "w0_unmerged" not in keys
    assert layer.lora_A.shape == (3, 4, 3, 3) and layer.lora_B.shape == (8, 3)
    delta = layer.get_delta_weight()
    assert delta.shape == conv.weight.shape and float(delta.abs().sum()) == 0  # B = 0 at init


def test_merge_unmerge_round_trip_is_bit_exact():
    layer = _lora_conv()
    x = torch.randn(2, 4, 6, 6)
    w0 = layer.w0.clone()
    with torch.no_grad():
        before = layer(x)
        codes = layer.int_weight()
        layer.merge()
        assert layer.merged and torch.equal(layer.w0, w0 + layer.get_delta_weight())
        assert torch.equal(layer(x), before) and torch.equal(layer.int_weight(), codes)  # Q(W0 + BA) either way
        assert float((layer.int_weight() - layer.w_quant.integers(w0)).abs().sum()) > 0  # ΔW moved the codes
        layer.merge()  # a second merge is a no-op
        assert torch.equal(layer(x), before)
        layer.unmerge()
        assert not layer.merged and torch.equal(layer.w0, w0) and torch.equal(layer(x), before)
        layer.unmerge()  # and so is a second unmerge
        assert torch.equal(layer.w0, w0)


def test_merge_refusals():
    plain = wrap_layer(nn.Linear(4, 4), 8, 8, None)
    with pytest.raises(ValueError, match="no LoRA"):
        plain.merge()
    layer = _lora_conv()
    with torch.no_grad():
        layer.lora_B[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        layer.merge(safe_merge=True)
    assert not layer.merged
    layer = _lora_conv()
    layer.merge()
    with pytest.raises(ValueError, match="unmerge"):
        layer.trainable_state()
    with pytest.raises(ValueError, match="unmerge"):
        layer.load_trainable_state({})
    layer.freeze()  # codes of Q(W0 + BA); the merge copy goes with the float path
    assert not layer.merged and layer.w0 is None and layer.lora_A is None


def test_train_state_round_trip_and_old_names():
    layer = _lora_conv(0)
    state = layer.trainable_state()
    assert set(state) == {"w0", "lora_A", "lora_B", "w_quant.scale", "w_quant.zero_point", "a_quant.scale",
                          "a_quant.zero_point"}  # the frozen fp base layer is not saved
    other = _lora_conv(1)
    other.load_trainable_state(state)
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in state.items())
    # QAT trains the base weight itself; states written before the peft-style names call it base.weight
    qat = wrap_layer(nn.Linear(6, 5), 4, 4, None)
    qat.base_layer.weight.requires_grad_(True)
    saved = qat.trainable_state()
    assert "base_layer.weight" in saved and "base_layer.bias" not in saved
    old = {k.replace("base_layer.", "base."): v for k, v in saved.items()}
    assert rename_legacy_keys(old) == saved
    fresh = wrap_layer(nn.Linear(6, 5), 4, 4, None)
    fresh.base_layer.weight.requires_grad_(True)
    fresh.load_trainable_state(old)
    assert torch.equal(fresh.base_layer.weight, qat.base_layer.weight)
    with pytest.raises(ValueError, match="missing 'base_layer.weight'"):
        fresh.load_trainable_state({k: v for k, v in old.items() if k != "base.weight"})
    with pytest.raises(ValueError, match="unexpected 'lora_A'"):
        fresh.load_trainable_state({**old, "lora_A": torch.zeros(1)})


def test_dispatcher_picks_the_wrapper_by_type():
    class MyLinear(nn.Linear):  # e.g. a library's Linear subclass: wrapped like its base class
        pass

    assert QUANT_LAYERS == {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}
    assert type(wrap_layer(nn.Conv2d(2, 3, 1), 8, 8, None)) is QuantConv2d
    assert type(wrap_layer(nn.Linear(2, 3), 8, 8, None)) is QuantLinear
    assert quant_layer_class(MyLinear(2, 3)) is QuantLinear and quant_layer_class(nn.GroupNorm(1, 4)) is None
    with pytest.raises(TypeError, match=r"cannot quantize a Conv1d layer; allowed: nn.Conv2d, nn.Linear"):
        wrap_layer(nn.Conv1d(2, 3, 1), 8, 8, None)
    with pytest.raises(TypeError, match="QuantLinear wraps Linear, not Conv2d"):
        QuantLinear(nn.Conv2d(2, 3, 1), 8, 8, None)
    model = nn.Sequential(nn.Conv1d(2, 2, 1), nn.Linear(2, 2), MyLinear(2, 2), nn.Conv2d(2, 2, 1))
    state = quantize_unet(model, QuantConfig())
    assert list(state.layers) == ["1", "2", "3"] and isinstance(model[0], nn.Conv1d)
    assert [type(m) for m in state.layers.values()] == [QuantLinear, QuantLinear, QuantConv2d]
