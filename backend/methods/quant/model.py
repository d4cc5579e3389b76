"""Inject fake-quantized layers into a diffusers U-Net (and remove them), the layer policy, the timestep hook.

The state lives in one :class:`QuantState` in the U-Net's metadata (``unet_info(unet).quant``); a forward
pre-hook on the U-Net reads the ``timestep`` argument of every call and sets the shared
:class:`TimestepIndex`, so per-step activation scales follow the denoising step (diffusers-hooks style).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from torch import nn

from backend.metadata import unet_info
from backend.methods.quant.config import QuantConfig
from backend.methods.quant.layers import (
    QUANT_LAYERS,
    ActQuantizer,
    QuantAttnProcessor,
    QuantLayer,
    TimestepIndex,
    check_bits,
    quant_layer_class,
    wrap_layer,
)
from backend.models import call_timestep

# transformer (DiT) layers under the policy's first_last / time_embed roles (kept at W8A8 by default, as the DiT
# PTQ literature does): patch embedding and text projections in, the final layer out; timestep, pooled-text and
# adaLN modulation linears (per block and final)
DIT_FIRST_LAST = ("pos_embed.proj", "x_embedder", "context_embedder", "proj_out", "proj_out_2")
DIT_MODULATION_ROOTS = ("adaln_single", "time_text_embed", "time_embed", "caption_projection", "norm_out")
DIT_MODULATION_LEAVES = (".norm1.linear", ".norm1_context.linear", ".norm.linear")


def layer_role(name: str) -> str:
    """first_last / time_embed / skip / downsample / body for a U-Net or transformer module name."""
    if name in ("conv_in", "conv_out") or name in DIT_FIRST_LAST:
        return "first_last"
    if name.split(".")[0] in ("time_embedding", "add_embedding", "class_embedding", "add_time_proj",
                              *DIT_MODULATION_ROOTS) or name.endswith(DIT_MODULATION_LEAVES):
        return "time_embed"
    if name.endswith("conv_shortcut"):
        return "skip"
    if ".downsamplers." in name:
        return "downsample"
    return "body"


def layer_bits(role: str, config: QuantConfig) -> tuple[int, int, bool] | None:
    """(weight bits, act bits, trainable+temporal) for a role under the policy, or None to stay FP."""
    target = (config.weight_bits, config.act_bits, True)
    fixed = (8, 8, False)
    if role in ("first_last", "time_embed"):
        return fixed if config.first_last_8bit else target
    if role in ("skip", "downsample"):
        policy = config.quantize_skip if role == "skip" else config.quantize_downsample
        return None if policy == "fp" else fixed if policy == "w8a8" else target
    return target


@dataclass
class QuantState:
    config: QuantConfig
    index: TimestepIndex
    layers: dict[str, QuantLayer]
    attn: dict[str, QuantAttnProcessor] = field(default_factory=dict)
    fp_layers: list[str] = field(default_factory=list)
    fingerprint: str = ""
    base_model: str = ""
    hook: object = None
    original_procs: dict = field(default_factory=dict)
    kernels: object = None  # a kernels.KernelReport once the layers run on real integer kernels

    def act_quantizers(self, temporal_only: bool = False) -> dict[str, ActQuantizer]:
        out = {f"{n}.a_quant": m.a_quant for n, m in self.layers.items()}
        for name, proc in self.attn.items():
            out.update({f"{name}.{k}": q for k, q in proc.quantizers().items()})
        return {k: q for k, q in out.items() if q.temporal or not temporal_only}

    def trainable_layers(self) -> dict[str, QuantLayer]:
        """Layers at the target bits (LoRA / QAT / temporal); the fixed 8-bit ones stay frozen."""
        return {n: m for n, m in self.layers.items() if m.a_quant.temporal}

    def set_quantize(self, on: bool) -> None:
        """Switch fake quantization on or off everywhere (off: the FP weights and activations)."""
        for m in self.layers.values():
            m.quantize, m._cache = on, None
        for p in self.attn.values():
            p.quantize = on

    def invalidate(self) -> None:
        for m in self.layers.values():
            m._cache = None

    def set_timesteps(self, timesteps: list[int]) -> None:
        """Make the per-step tables follow ``timesteps`` (resampled by timestep when they change)."""
        resample_timesteps(self, timesteps)

    def kernel_of(self, name: str) -> str:
        """Which kernel runs a quantized layer: int8 (oneDNN), or simulated (and why, when real was asked)."""
        report = self.kernels
        if report is None or report.kernels != "real":
            return "simulated"
        return "int8 oneDNN" if name in report.int8_layers else f"simulated: {report.simulated.get(name, '?')}"

    def summary_rows(self) -> list[dict]:
        rows = []
        for name, m in self.layers.items():
            a_steps = len(self.index) if m.a_quant.temporal else 1
            rows.append({"layer": name, "type": type(m.base_layer).__name__, "role": m.role,
                         "weight": f"int{m.w_quant.bits}/channel", "act": f"int{m.a_quant.bits}/tensor",
                         "act_steps": a_steps, "lora_rank": m.lora_rank, "params": m.base_layer.weight.numel(),
                         "kernel": self.kernel_of(name)})
        for name in self.fp_layers:
            rows.append({"layer": name, "type": "Conv2d", "role": layer_role(name), "weight": "fp32", "act": "fp32",
                         "act_steps": 0, "lora_rank": 0, "params": 0, "kernel": "fp32"})
        for name, proc in self.attn.items():
            rows.append({"layer": f"{name} (matmuls)", "type": "attention", "role": "attn_matmul", "weight": "-",
                         "act": f"int{proc.q.bits}/tensor",
                         "act_steps": len(self.index) if proc.q.temporal else 1, "lora_rank": 0, "params": 0,
                         "kernel": self.kernel_of(f"{name} (matmuls)")})
        return rows


def get_state(unet: nn.Module) -> QuantState | None:
    """The U-Net's quantization state (None: not quantized)."""
    return unet_info(unet).quant


def fingerprint(unet: nn.Module) -> str:
    """A short hash of the U-Net's architecture and weights (a sample of each tensor), to match checkpoints.

    A lean copy (weights left on the meta device for a checkpoint to fill) carries its base's hash.
    """
    if unet_info(unet).fingerprint:
        return unet_info(unet).fingerprint
    h = hashlib.sha256()
    config = dict(getattr(unet, "config", {}) or {})
    h.update(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True,
                        default=str).encode())
    for name, p in sorted(unet.state_dict().items()):
        flat = p.detach().reshape(-1).double().cpu()
        sample = flat[:: max(1, flat.numel() // 64)][:64]
        h.update(f"{name}{tuple(p.shape)}{float(flat.sum()):.6e}".encode())
        h.update(sample.numpy().round(6).tobytes())
    return h.hexdigest()[:16]


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def quantize_unet(unet: nn.Module, config: QuantConfig, timesteps: list[int] | None = None,
                  base_model: str = "") -> QuantState:
    """Wrap the U-Net's layers of a type in :data:`~backend.methods.quant.layers.QUANT_LAYERS` in place by the
    layer policy; ValueError when none can be."""
    check_bits(config.weight_bits, "quant.weight_bits")
    check_bits(config.act_bits, "quant.act_bits")
    if not isinstance(unet, nn.Module):
        raise ValueError(f"expected a U-Net module, got {type(unet).__name__}")
    if get_state(unet) is not None:
        raise ValueError("this U-Net is already quantized; quantize a fresh copy")
    candidates = [(n, m) for n, m in unet.named_modules() if n and quant_layer_class(m) is not None]
    if not candidates:
        allowed = " or ".join(f"nn.{t.__name__}" for t in QUANT_LAYERS)
        raise ValueError(f"model {type(unet).__name__} has no quantizable layers (no {allowed} in its U-Net); "
                         "quantization needs a U-Net with convolution or linear layers")
    fp = fingerprint(unet)
    index = TimestepIndex(timesteps)
    layers, fp_layers = {}, []
    for name, module in candidates:
        role = layer_role(name)
        bits = layer_bits(role, config)
        if bits is None:
            fp_layers.append(name)
            continue
        w_bits, a_bits, temporal = bits
        symmetric = w_bits == 8 and config.symmetric_8bit_weights
        layers[name] = wrap_layer(module, w_bits, a_bits, index if temporal else None, role, symmetric)
    if not layers:
        raise ValueError("the layer policy leaves no layer to quantize; allowed: a policy that quantizes at least one")
    for name, layer in layers.items():
        _set_module(unet, name, layer)
    state = QuantState(config=config, index=index, layers=layers, fp_layers=fp_layers, fingerprint=fp,
                       base_model=base_model)
    if config.quantize_attn_matmul:
        from diffusers.models.attention_processor import Attention

        for name, module in unet.named_modules():
            if isinstance(module, Attention):
                state.original_procs[name] = module.processor
                device = next(module.parameters()).device
                proc = QuantAttnProcessor(config.act_bits, index).to(device)
                module.set_processor(proc)
                state.attn[name] = proc

    def hook(module, args, kwargs):
        t = call_timestep(module, args, kwargs)
        if t is None:
            raise ValueError("the quantized U-Net was called without a timestep")
        state.index.set_timestep(t)

    state.hook = unet.register_forward_pre_hook(hook, with_kwargs=True)
    unet_info(unet).quant = state
    return state


def remove(unet: nn.Module) -> None:
    """Undo :func:`quantize_unet`: the original layers, processors and no hook."""
    state = get_state(unet)
    if state is None:
        return
    for name, layer in state.layers.items():
        _set_module(unet, name, layer.base_layer)
    for name, proc in state.original_procs.items():
        unet.get_submodule(name).set_processor(proc)
    state.hook.remove()
    unet_info(unet).quant = None


def resample_timesteps(state: QuantState, timesteps: list[int]) -> None:
    """Re-index the per-step activation tables for a new schedule (linear interpolation over timestep)."""
    timesteps = [int(t) for t in timesteps]
    if not timesteps:
        raise ValueError("timesteps: empty; allowed: one or more denoising timesteps")
    old = list(state.index.timesteps)
    fresh = len(old) == 1 and old == [0]
    for q in state.act_quantizers(temporal_only=True).values():
        q.resize(len(timesteps), timesteps, None if fresh else old)
    state.index.timesteps = timesteps
    state.index.current = 0


def summary(unet: nn.Module) -> str:
    """A printable table of every U-Net layer's precision (weights, activations, steps, LoRA rank)."""
    state = get_state(unet)
    if state is None:
        return "not quantized (all layers fp32)"
    rows = state.summary_rows()
    cols = ("layer", "type", "role", "weight", "act", "act_steps", "lora_rank", "kernel")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    counts: dict[str, int] = {}
    for r in rows:
        if r["params"]:
            counts[r["weight"]] = counts.get(r["weight"], 0) + r["params"]
    cfg = state.config
    lines.append(f"{len(state.layers)} quantized layers, {len(state.fp_layers)} fp, "
                 f"{len(state.attn)} attention matmul pairs; target W{cfg.weight_bits}A{cfg.act_bits}; weights by "
                 "precision: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items())))
    if state.kernels is not None:
        lines.append(state.kernels.summary() + "".join(f"; {note}" for note in state.kernels.notes))
    return "\n".join(lines)


def config_dict(config: QuantConfig) -> dict:
    return dataclasses.asdict(config)
