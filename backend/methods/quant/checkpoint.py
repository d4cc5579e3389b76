"""Quantized checkpoints: packed integer weights + scales + per-step activation scales, in safetensors.

A checkpoint is a directory:

- ``quant_config.json`` — format/version, the QuantConfig, the base model (source and a fingerprint of
  its U-Net), the timesteps of the per-step activation tables, per-layer bits, the sha256 of the
  tensor file, and (for fine-tunes) the training progress;
- ``quant_model.safetensors`` — the layers' packed integer weights (uint8; 2-bit codes four per byte,
  3–4-bit codes two per byte, 5–8-bit one per byte), per-output-channel fp32 step sizes and uint8 zero
  points, biases, the per-step activation step sizes / zero points, and every other U-Net tensor
  (norms, layers left FP) in fp32 — concatenated in the layer order of quant_config.json so the file
  is a handful of tensors and its size is the U-Net's real low-bit size;
- ``train_state.safetensors`` (fine-tunes only) — what resuming needs: float LoRA / latent weights,
  step sizes and the optimizer moments.

Directories are written to a temporary name and renamed into place, so a reader never sees half a
checkpoint. Loading verifies the base model and the file hash and reproduces the saved model bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from backend.methods.quant.config import QuantConfig
from backend.methods.quant.model import QuantState, fingerprint, get_state, quantize_unet

FORMAT, VERSION = "speedlab-quant", 1
CONFIG_FILE, MODEL_FILE, TRAIN_FILE = "quant_config.json", "quant_model.safetensors", "train_state.safetensors"

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the path and what is wrong."""


def _per_byte(bits: int) -> int:
    return 4 if bits <= 2 else 2 if bits <= 4 else 1


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes in [0, 2^bits) → uint8 bytes (several codes per byte for bits ≤ 4)."""
    flat = codes.detach().reshape(-1).to("cpu", torch.int32)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2 ** bits):
        raise ValueError(f"codes out of range for {bits}-bit packing")
    per = _per_byte(bits)
    width = 8 // per
    pad = (-flat.numel()) % per
    flat = torch.cat([flat, flat.new_zeros(pad)]).view(-1, per)
    out = torch.zeros(flat.shape[0], dtype=torch.int32)
    for i in range(per):
        out |= flat[:, i] << (i * width)
    return out.to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack`: uint8 codes (numel of them)."""
    per = _per_byte(bits)
    width = 8 // per
    b = packed.reshape(-1).to(torch.int32)
    parts = [(b >> (i * width)) & ((1 << width) - 1) for i in range(per)]
    flat = torch.stack(parts, dim=1).reshape(-1)
    if flat.numel() < numel:
        raise CheckpointError(f"packed weights hold {flat.numel()} codes, expected {numel}")
    return flat[:numel].to(torch.uint8)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _quant_prefixes(state: QuantState) -> list[str]:
    return [f"{n}." for n in state.layers] + [f"{n}.processor." for n in state.attn]


def _act_quantizers(state: QuantState) -> list:
    """Every activation quantizer in checkpoint order (layers, then attention matmul inputs)."""
    out = [m.a_quant for m in state.layers.values()]
    for proc in state.attn.values():
        out += list(proc.quantizers().values())
    return out


def _fp_items(unet, state: QuantState) -> list[tuple[str, torch.Tensor]]:
    prefixes = tuple(_quant_prefixes(state))
    return [(k, v) for k, v in unet.state_dict().items() if not k.startswith(prefixes)]


def model_tensors(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of ``quant_model.safetensors`` for a quantized U-Net.

    Few, large tensors (so the file header stays small and the file size is the model's low-bit size):
    ``qweight.<bits>`` (each layer's packed codes, concatenated in layer order), ``w_scale``, ``w_zero``,
    ``bias``, ``a_scale``, ``a_zero`` (concatenated likewise) and ``fp.float32`` (every other U-Net
    tensor, flattened in state-dict order); tensors of other dtypes are kept as ``fp.<key>``.
    """
    state = get_state(unet)
    packed: dict[int, list[torch.Tensor]] = {}
    w_scale, w_zero, bias = [], [], []
    with torch.no_grad():
        for layer in state.layers.values():
            bits = layer.w_quant.bits
            packed.setdefault(bits, []).append(pack(layer.int_weight().round(), bits))
            w_scale.append(layer.w_quant.scale.detach().float())
            w_zero.append(layer.w_quant.zero_point.detach().round().to(torch.uint8))
            if layer.base_layer.bias is not None:
                bias.append(layer.base_layer.bias.detach().float())
        acts = _act_quantizers(state)
        out = {f"qweight.{b}": torch.cat(v) for b, v in packed.items()}
        out.update({"w_scale": torch.cat(w_scale), "w_zero": torch.cat(w_zero),
                    "a_scale": torch.cat([q.scale.detach().float() for q in acts]),
                    "a_zero": torch.cat([q.zero_point.detach().float() for q in acts])})
        if bias:
            out["bias"] = torch.cat(bias)
        floats = []
        for key, value in _fp_items(unet, state):
            if value.dtype == torch.float32:
                floats.append(value.detach().reshape(-1))
            else:
                out[f"fp.{key}"] = value.detach().clone()
        if floats:
            out["fp.float32"] = torch.cat(floats)
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def describe(unet: torch.nn.Module) -> dict:
    state = get_state(unet)
    return {
        "format": FORMAT, "version": VERSION, "config": dataclasses.asdict(state.config),
        "base_model": state.base_model, "base_fingerprint": state.fingerprint,
        "timesteps": list(state.index.timesteps),
        "layers": {n: {"role": m.role, "w_bits": m.w_quant.bits, "a_bits": m.a_quant.bits,
                       "temporal": m.a_quant.temporal, "shape": list(m.base_layer.weight.shape)}
                   for n, m in state.layers.items()},
        "fp_layers": list(state.fp_layers), "attn": list(state.attn),
    }


def check_out(out: str | Path) -> Path:
    """A checkpoint destination: a new path in a writable folder, or an earlier checkpoint of this command."""
    from backend.paths import check_out_dir

    out = check_out_dir(out, "--out")
    _recover(out)
    if out.exists() and any(out.iterdir()) and not (out / CONFIG_FILE).exists():
        raise CheckpointError(f"--out {str(out)!r} exists and is not a quant checkpoint directory; allowed: a new "
                              "path or an earlier checkpoint of this command")
    return out


def _recover(out: Path) -> None:
    """After a crash inside :func:`write_dir`: put back a checkpoint moved aside, drop half-written temporaries."""
    if not out.parent.is_dir():
        return
    if not out.exists():
        old = sorted(out.parent.glob(f".{out.name}.old-*"), key=lambda p: p.stat().st_mtime)
        if old:
            os.replace(old[-1], out)
    for leftover in [*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def write_dir(out: Path, write) -> Path:
    """Run ``write(tmpdir)`` then rename tmpdir to ``out`` (replacing an older checkpoint there)."""
    out = check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def save_checkpoint(unet: torch.nn.Module, out: str | Path, training: dict | None = None,
                    train_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint directory for a quantized U-Net (atomically)."""
    if get_state(unet) is None:
        raise ValueError("this U-Net is not quantized; nothing to save")
    tensors = model_tensors(unet)
    meta = describe(unet)

    def write(tmp: Path) -> None:
        save_file(tensors, tmp / MODEL_FILE, metadata={"format": FORMAT})
        meta["files"] = {MODEL_FILE: _sha256(tmp / MODEL_FILE)}
        if train_tensors is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in train_tensors.items()}, tmp / TRAIN_FILE)
            meta["files"][TRAIN_FILE] = _sha256(tmp / TRAIN_FILE)
        if training is not None:
            meta["training"] = training
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=1))

    path = write_dir(Path(out), write)
    logger.info("wrote quant checkpoint %s (%.2f MiB packed)", path, checkpoint_size_mb(path))
    return path


def read_meta(path: str | Path) -> dict:
    """quant_config.json of a checkpoint directory, checked; CheckpointError otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"quant checkpoint {str(path)!r} is not a directory; allowed: a directory written by "
                              "`python -m backend finetune efficientdm --out DIR`")
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"quant checkpoint {str(path)!r} has no {CONFIG_FILE}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"quant checkpoint {str(path)!r}: {CONFIG_FILE} is corrupted ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"quant checkpoint {str(path)!r}: {CONFIG_FILE} is not a {FORMAT} file")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"quant checkpoint {str(path)!r}: format version {meta.get('version')!r} is not "
                              f"supported; allowed: {VERSION}")
    return meta


def _load_tensors(path: Path, meta: dict, name: str) -> dict[str, torch.Tensor]:
    file = path / name
    if not file.is_file():
        raise CheckpointError(f"quant checkpoint {str(path)!r} has no {name}")
    expected = meta.get("files", {}).get(name)
    if expected and _sha256(file) != expected:
        raise CheckpointError(f"quant checkpoint {str(path)!r}: {name} is corrupted or truncated (its sha256 does "
                              "not match quant_config.json)")
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"quant checkpoint {str(path)!r}: {name} is corrupted or truncated ({exc})") from None


def config_from_meta(meta: dict, path: str | Path) -> QuantConfig:
    raw = dict(meta.get("config", {}))
    method = raw.pop("method", "ptq")
    raw.pop("checkpoint", None)
    try:
        cfg = QuantConfig.from_dict(raw)
    except ValueError as exc:
        raise CheckpointError(f"quant checkpoint {str(path)!r}: bad config ({exc})") from None
    return dataclasses.replace(cfg, method=method, checkpoint=str(path))


def require_same_base(meta: dict, unet: torch.nn.Module, what: str, base_model: str = "") -> None:
    """CheckpointError unless the checkpoint ``meta`` was made from this FP ``unet`` (its fingerprint)."""
    fp = fingerprint(unet)
    if meta.get("base_fingerprint") != fp:
        raise CheckpointError(
            f"{what} was made from model {meta.get('base_model') or '?'!r} (U-Net fingerprint "
            f"{meta.get('base_fingerprint')}), not from this model {base_model or '?'!r} (fingerprint {fp}); "
            "allowed: the same base model, or a new --out")


def load_checkpoint(unet: torch.nn.Module, path: str | Path, base_model: str = "") -> QuantState:
    """Quantize the FP ``unet`` in place from a checkpoint; CheckpointError on another model's or a bad one."""
    path = Path(path)
    meta = read_meta(path)
    require_same_base(meta, unet, f"quant checkpoint {str(path)!r}", base_model)
    tensors = _load_tensors(path, meta, MODEL_FILE)
    config = config_from_meta(meta, path)
    state = quantize_unet(unet, config, meta.get("timesteps"), base_model=meta.get("base_model", base_model))
    try:
        _fill(unet, state, meta, tensors)
    except CheckpointError:
        raise
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"quant checkpoint {str(path)!r} does not match this model's layers ({exc})") from None
    logger.info("loaded quant checkpoint %s (%s W%dA%d, %d layers)", path, config.method, config.weight_bits,
                config.act_bits, len(state.layers))
    return state


class _Reader:
    """Consecutive slices of a concatenated checkpoint tensor."""

    def __init__(self, tensors: dict[str, torch.Tensor], key: str):
        if key not in tensors:
            raise CheckpointError(f"tensor {key!r} is missing")
        self.data, self.key, self.pos = tensors[key].reshape(-1), key, 0

    def take(self, n: int) -> torch.Tensor:
        if self.pos + n > self.data.numel():
            raise CheckpointError(f"tensor {self.key!r} is shorter than this model needs")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def done(self) -> None:
        if self.pos != self.data.numel():
            raise CheckpointError(f"tensor {self.key!r} is longer than this model needs")


@torch.no_grad()
def _fill(unet, state: QuantState, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    layers_meta = meta.get("layers", {})
    if list(layers_meta) != list(state.layers):
        missing = sorted(set(layers_meta) ^ set(state.layers)) or ["(order)"]
        raise CheckpointError(f"checkpoint layers differ from this model's, e.g. {missing[0]!r}")
    readers = {k: _Reader(tensors, k) for k in tensors if k.startswith("qweight.")}
    w_scale, w_zero = _Reader(tensors, "w_scale"), _Reader(tensors, "w_zero")
    bias = _Reader(tensors, "bias") if "bias" in tensors else None
    for name, layer in state.layers.items():
        info = layers_meta[name]
        if info["w_bits"] != layer.w_quant.bits or info["a_bits"] != layer.a_quant.bits:
            raise CheckpointError(f"layer {name!r}: checkpoint bits W{info['w_bits']}A{info['a_bits']} differ from "
                                  f"the policy's W{layer.w_quant.bits}A{layer.a_quant.bits}")
        shape = layer.base_layer.weight.shape
        if list(shape) != list(info["shape"]):
            raise CheckpointError(f"layer {name!r}: checkpoint shape {info['shape']} differs from {list(shape)}")
        bits = layer.w_quant.bits
        key = f"qweight.{bits}"
        if key not in readers:
            raise CheckpointError(f"tensor {key!r} is missing")
        per = _per_byte(bits)
        codes = unpack(readers[key].take(-(-shape.numel() // per)), bits, shape.numel()).view(shape)
        if int(codes.max()) > layer.w_quant.qmax:
            raise CheckpointError(f"layer {name!r}: weight codes exceed {bits} bits")
        n = shape[0]
        layer.w_quant.scale.data.copy_(w_scale.take(n))
        layer.w_quant.zero_point.copy_(w_zero.take(n).float())
        layer.set_codes(codes.to(layer.w_quant.scale.device))
        if layer.base_layer.bias is not None:
            if bias is None:
                raise CheckpointError("tensor 'bias' is missing")
            layer.base_layer.bias.data.copy_(bias.take(layer.base_layer.bias.numel()))
    a_scale, a_zero = _Reader(tensors, "a_scale"), _Reader(tensors, "a_zero")
    for q in _act_quantizers(state):
        q.scale.data.copy_(a_scale.take(q.scale.numel()))
        q.zero_point.data.copy_(a_zero.take(q.zero_point.numel()))
    floats = _Reader(tensors, "fp.float32") if "fp.float32" in tensors else None
    for key, value in _fp_items(unet, state):
        if value.dtype == torch.float32:
            if floats is None:
                raise CheckpointError("tensor 'fp.float32' is missing")
            value.copy_(floats.take(value.numel()).view_as(value))
        else:
            if f"fp.{key}" not in tensors or tensors[f"fp.{key}"].shape != value.shape:
                raise CheckpointError(f"tensor {key!r} does not fit this model")
            value.copy_(tensors[f"fp.{key}"])
    for reader in [*readers.values(), w_scale, w_zero, a_scale, a_zero, *(r for r in (bias, floats) if r)]:
        reader.done()
    state.invalidate()


def load_train_state(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(training progress, tensors) of a fine-tune checkpoint, for resuming."""
    path = Path(path)
    meta = read_meta(path)
    if "training" not in meta:
        raise CheckpointError(f"quant checkpoint {str(path)!r} has no training state to resume from")
    return meta, _load_tensors(path, meta, TRAIN_FILE)


def checkpoint_size_mb(path: str | Path) -> float:
    """Size on disk of the model part of a checkpoint (quant_model.safetensors), in MiB."""
    return (Path(path) / MODEL_FILE).stat().st_size / 2**20


def implied_settings(path: str) -> dict:
    """What a quant checkpoint fixes in its Variant section: its method and bits (QuantConfig.checkpoint_implies)."""
    from backend.methods.quant.config import QuantConfig

    cfg = read_meta(path).get("config", {})
    return {"quant": {k: cfg[k] for k in QuantConfig.locked_by_checkpoint if k in cfg}}
