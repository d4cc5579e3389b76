"""Single-file checkpoints in the original layouts: load one offline, or write one.

Loading uses diffusers' ``from_single_file``: Stable Diffusion 1.x / 2.x / XL (LDM layout, ``model.diffusion_model.``
U-Net weights) and the transformer families diffusers converts, SD3 / 3.5 (``joint_blocks``) and Flux
(``double_blocks`` / ``single_blocks``, with or without the ``model.diffusion_model.`` prefix; diffusers' Flux
conversion assumes the full-size 3072-wide model). The file holds weights only; the architecture, scheduler and
tokenizers come from ``config`` (for SD3 / Flux files, whose denoiser is what fine-tunes change, everything but the
transformer does: text encoders and VAE included), a local diffusers folder of the same family (e.g. the Hub folder
of the model the file was fine-tuned from), or from the local Hugging Face cache of the family's reference model.
``.ckpt`` files are pickles, which can run code when loaded: they load only with ``allow_pickle``.

Writing (:func:`to_single_file`) turns a diffusers SD-layout pipeline folder (one text encoder) into that layout, or
an SD3 folder's transformer into SD3's, key for key the inverse of diffusers' conversion; the embedded shapes-sd and
tiny-sd3 round-trip through it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from backend.core import ModelError

UNET, VAE, TEXT = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."
SDXL_MARKER = "conditioner.embedders.1."
DIT_MARKERS = {"sd3": "joint_blocks.", "flux": "double_blocks."}  # a key holding it: that family's transformer
DIT_PIPELINES = {"sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}
LDM_UNET = ("time_embed", "input_blocks", "middle_block", "output_blocks", "out", "label_emb")
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


class SingleFileError(ModelError):
    """A single-file checkpoint that cannot be used; the message names it and what is allowed."""


def _keys(path: Path, allow_pickle: bool) -> list[str]:
    if path.suffix.lower() == ".ckpt":
        return list(torch.load(path, map_location="cpu", weights_only=True).get("state_dict", {}))
    with safe_open(path, "pt") as fh:
        return list(fh.keys())


def load_single_file(path: Path, torch_dtype: torch.dtype, config: str | None, allow_pickle: bool):
    """The pipeline of a single-file checkpoint; SingleFileError (one line) for anything that cannot load."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if not path.is_file():
        raise SingleFileError(f"model {str(path)!r}: no such file")
    if path.suffix.lower() == ".ckpt":
        if not allow_pickle:
            raise SingleFileError(f"model {str(path)!r} is a pickle (.ckpt), which can run code when loaded; convert "
                                  "it to .safetensors, or set \"allow_pickle\": true in the variant if you trust it")
        print(f"warning: loading the pickle {path} (allow_pickle is set)", file=sys.stderr)
    try:
        keys = _keys(path, allow_pickle)
    except Exception as exc:  # safetensors / torch raise several types for files that are not checkpoints
        raise SingleFileError(f"model {str(path)!r} is not a readable checkpoint ({type(exc).__name__})") from exc
    family = next((f for f, marker in DIT_MARKERS.items() if any(marker in k for k in keys)), None)
    if family is not None:
        return _load_dit(path, family, torch_dtype, config)
    if not any(k.startswith(UNET) for k in keys):
        raise SingleFileError(f"model {str(path)!r} is not a checkpoint in an original layout diffusers converts "
                              f"(no {UNET}* U-Net, SD3 joint_blocks or Flux double_blocks weights); allowed: "
                              "SD 1.x / 2.x / XL, SD3 / 3.5 and Flux single files, or a diffusers folder")
    sdxl = any(k.startswith(SDXL_MARKER) for k in keys)
    cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    kwargs: dict = {"torch_dtype": torch_dtype, "local_files_only": True}
    if config is not None:
        index = Path(config) / "model_index.json"
        if not index.is_file():
            raise SingleFileError(f"model_config {config!r} is not a local diffusers folder (no model_index.json)")
        declared = json.loads(index.read_text()).get("_class_name", "")
        if ("XL" in declared) != sdxl:
            kind = "an SDXL" if sdxl else "an SD 1.x/2.x"
            raise SingleFileError(f"model_config {config!r} is a {declared} folder but {path.name} is {kind} "
                                  "checkpoint; give a folder of the same family")
        kwargs["config"] = str(config)
    if not sdxl:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        if config is not None and not sdxl and any(k.startswith(UNET) and k[len(UNET):].split(".")[0] not in LDM_UNET
                                                   for k in keys):
            kwargs["unet"] = _unet_with_extras(path, Path(config), torch_dtype)
        return cls.from_single_file(str(path), **kwargs)
    except Exception as exc:  # diffusers raises many types for missing configs and mismatched shapes
        how = "a model_config folder of the same family" if config is None else "a model_config of the same family"
        raise SingleFileError(f"model {str(path)!r} could not be loaded offline as a {cls.__name__} single file "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); give {how}") from exc


def _load_dit(path: Path, family: str, torch_dtype: torch.dtype, config: str | None):
    """An SD3 or Flux single file: its transformer converted by diffusers' ``from_single_file``; the text encoders,
    VAE, scheduler and tokenizers from ``config`` (or the Hub cache of the model diffusers infers from the keys)."""
    import diffusers
    from diffusers.loaders.single_file_utils import fetch_diffusers_config, load_single_file_checkpoint

    cls = getattr(diffusers, DIT_PIPELINES[family])
    if config is not None:
        index = Path(config) / "model_index.json"
        if not index.is_file():
            raise SingleFileError(f"model_config {config!r} is not a local diffusers folder (no model_index.json)")
        declared = json.loads(index.read_text()).get("_class_name", "")
        if declared != cls.__name__:
            raise SingleFileError(f"model_config {config!r} is a {declared} folder but {path.name} is a {family} "
                                  f"checkpoint; give a {cls.__name__} folder")
    transformer_cls = {"sd3": diffusers.SD3Transformer2DModel, "flux": diffusers.FluxTransformer2DModel}[family]
    try:
        checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
        source = str(config) if config else fetch_diffusers_config(checkpoint)["pretrained_model_name_or_path"]
        transformer = transformer_cls.from_single_file(str(path), config=source, subfolder="transformer",
                                                       torch_dtype=torch_dtype, local_files_only=True)
        return cls.from_pretrained(source, transformer=transformer, dtype=torch_dtype, local_files_only=True)
    except Exception as exc:  # diffusers raises many types for missing configs and mismatched shapes
        raise SingleFileError(f"model {str(path)!r} could not be loaded offline as a {cls.__name__} single file "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); give a model_config "
                              f"{cls.__name__} folder of the same model") from exc


def _unet_with_extras(path: Path, config: Path, torch_dtype: torch.dtype):
    """The U-Net of a file that also holds weights with no LDM name (kept under their diffusers names)."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    from safetensors.torch import load_file

    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet"))
    checkpoint = load_file(path)
    weights = convert_ldm_unet_checkpoint(checkpoint, dict(unet.config))
    weights.update({k[len(UNET):]: v for k, v in checkpoint.items()
                    if k.startswith(UNET) and k[len(UNET):].split(".")[0] not in LDM_UNET})
    unet.load_state_dict(weights)
    return unet.to(torch_dtype)


def _unet_to_ldm(sd: dict[str, torch.Tensor], cfg: dict) -> dict[str, torch.Tensor]:
    levels, per = len(cfg["block_out_channels"]), cfg["layers_per_block"]
    rename = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
              "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
              "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
              "mid_block.resnets.1": "middle_block.2"}
    for i in range(levels):
        for j in range(per):
            rename[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{1 + i * (per + 1) + j}.0"
            rename[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{1 + i * (per + 1) + j}.1"
        rename[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(i + 1) * (per + 1)}.0.op"
        has_attn = "CrossAttn" in cfg["up_block_types"][i]
        for j in range(per + 1):
            rename[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{i * (per + 1) + j}.0"
            rename[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{i * (per + 1) + j}.1"
        rename[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{i * (per + 1) + per}.{2 if has_attn else 1}.conv"
    out = {}
    for key, value in sd.items():
        prefix = next((p for p in sorted(rename, key=len, reverse=True) if key.startswith(p + ".")), None)
        if prefix is None:  # no LDM name (e.g. the "text" addition embedding): kept under its diffusers name
            out[UNET + key] = value
            continue
        rest = key[len(prefix) + 1:]
        if ".resnets." in prefix or prefix.startswith("mid_block.resnets"):
            head, _, tail = rest.partition(".")
            rest = f"{RESNET.get(head, head)}.{tail}"
        out[UNET + rename[prefix] + "." + rest] = value
    return out


def _vae_to_ldm(sd: dict[str, torch.Tensor], cfg: dict) -> dict[str, torch.Tensor]:
    n = len(cfg["block_out_channels"])
    out = {}
    for key, value in sd.items():
        new = key.replace("conv_norm_out", "norm_out")
        for part in ("encoder", "decoder"):
            new = new.replace(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.")
            new = new.replace(f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.")
            if f"{part}.mid_block.attentions.0." in new:
                head, _, tail = new.split(f"{part}.mid_block.attentions.0.", 1)[1].rpartition(".")
                new = f"{part}.mid.attn_1.{VAE_ATTN[head]}.{tail}"
                if head != "group_norm" and value.ndim == 2:
                    value = value[:, :, None, None]
        for i in range(n):
            new = new.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            new = new.replace(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
            new = new.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block.")
            new = new.replace(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample.")
        out[VAE + new.replace("conv_shortcut", "nin_shortcut")] = value
    return out


def _sd3_to_original(sd: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """An SD3Transformer2DModel's weights in SD3's original layout (the inverse of diffusers' conversion: fused
    q/k/v, and the last context block's and the final layer's modulation as shift then scale)."""
    def swap(t: torch.Tensor) -> torch.Tensor:  # diffusers keeps (scale, shift); the original (shift, scale)
        scale, shift = t.chunk(2, dim=0)
        return torch.cat([shift, scale])

    out = {"pos_embed": sd.pop("pos_embed.pos_embed"), "x_embedder.proj.weight": sd.pop("pos_embed.proj.weight"),
           "x_embedder.proj.bias": sd.pop("pos_embed.proj.bias")}
    rename = {"time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
              "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
              "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
              "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2", "context_embedder": "context_embedder",
              "proj_out": "final_layer.linear"}
    for i in range(num_layers):
        b, j = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        for kind in ("weight", "bias"):
            for stream, names in (("x_block.attn", ("attn.to_q", "attn.to_k", "attn.to_v")),
                                  ("context_block.attn", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
                                  ("x_block.attn2", ("attn2.to_q", "attn2.to_k", "attn2.to_v"))):
                if f"{b}{names[0]}.{kind}" in sd:
                    out[f"{j}{stream}.qkv.{kind}"] = torch.cat([sd.pop(f"{b}{n}.{kind}") for n in names])
        last = f"{b}norm1_context.linear."
        for kind in ("weight", "bias"):
            if i == num_layers - 1:
                out[f"{j}context_block.adaLN_modulation.1.{kind}"] = swap(sd.pop(last + kind))
        rename.update({f"{b}attn.norm_q": f"{j}x_block.attn.ln_q", f"{b}attn.norm_k": f"{j}x_block.attn.ln_k",
                       f"{b}attn.norm_added_q": f"{j}context_block.attn.ln_q",
                       f"{b}attn.norm_added_k": f"{j}context_block.attn.ln_k",
                       f"{b}attn2.norm_q": f"{j}x_block.attn2.ln_q", f"{b}attn2.norm_k": f"{j}x_block.attn2.ln_k",
                       f"{b}attn.to_out.0": f"{j}x_block.attn.proj",
                       f"{b}attn.to_add_out": f"{j}context_block.attn.proj",
                       f"{b}attn2.to_out.0": f"{j}x_block.attn2.proj",
                       f"{b}norm1.linear": f"{j}x_block.adaLN_modulation.1",
                       f"{b}norm1_context.linear": f"{j}context_block.adaLN_modulation.1",
                       f"{b}ff.net.0.proj": f"{j}x_block.mlp.fc1", f"{b}ff.net.2": f"{j}x_block.mlp.fc2",
                       f"{b}ff_context.net.0.proj": f"{j}context_block.mlp.fc1",
                       f"{b}ff_context.net.2": f"{j}context_block.mlp.fc2"})
    for kind in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{kind}"] = swap(sd.pop(f"norm_out.linear.{kind}"))
    for key, value in sd.items():
        module, _, kind = key.rpartition(".")
        if module not in rename:
            raise SingleFileError(f"SD3 transformer weight {key!r} has no name in the original layout")
        out[rename[module] + "." + kind] = value
    return {UNET + k: v for k, v in out.items()}


def to_single_file(folder: str | Path, out: str | Path) -> Path:
    """Write the diffusers SD-layout pipeline in ``folder`` as one original-layout ``.safetensors`` file (an SD3
    folder: its transformer alone, as SD3's transformer-only files hold it)."""
    from diffusers import DiffusionPipeline

    out = Path(out)
    if out.suffix != ".safetensors":
        raise SingleFileError(f"out {str(out)!r} must end in .safetensors")
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    if type(pipe).__name__ == DIT_PIPELINES["sd3"]:
        tensors = _sd3_to_original(dict(pipe.transformer.state_dict()), pipe.transformer.config.num_layers)
    elif getattr(pipe, "unet", None) is None or getattr(pipe, "text_encoder_2", None) is not None:
        raise SingleFileError(f"{folder}: a {type(pipe).__name__} folder is not converted here; allowed: SD-layout "
                              "pipelines (one text encoder) and StableDiffusion3Pipeline folders")
    else:
        tensors = _unet_to_ldm(pipe.unet.state_dict(), dict(pipe.unet.config))
        tensors.update(_vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config)))
        text = pipe.text_encoder.state_dict()  # the original layout names CLIP's weights text_model.*
        tensors.update({TEXT + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in text.items()})
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, tmp)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m backend.single_file FOLDER OUT.safetensors``: write a diffusers SD folder (or an SD3 folder's
    transformer) as one original-layout file."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m backend.single_file", description=main.__doc__)
    parser.add_argument("folder", help="a local diffusers SD-layout pipeline folder (one text encoder) or an SD3 one")
    parser.add_argument("out", help="the .safetensors file to write")
    args = parser.parse_args(argv)
    try:
        print(to_single_file(args.folder, args.out))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
