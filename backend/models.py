"""Load a text-to-image pipeline (the embedded shapes-sd / shapes-dit, a local diffusers folder, a single-file
checkpoint, a Hub id, or a random-weight architecture) and declare its family: sd1, sd2, sdxl, another U-Net, the
transformer (DiT) families pixart, sd3, flux, or unsupported. :func:`denoiser` is the network that denoises (the
U-Net or the transformer): every layer that needs it goes through it."""

from __future__ import annotations

import json
import os
from functools import cache, lru_cache
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    FluxTransformer2DModel,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.utils import logging as diffusers_logging
from safetensors import SafetensorError
from transformers import CLIPTextConfig, CLIPTextModel
from transformers.utils import logging as transformers_logging

from backend.core import ModelError
from backend.dit_archs import ARCH_DEFAULTS, DIT_ARCHS, build_dit_pipeline
from backend.metadata import DEEPCACHE_HOOK, PipelineInfo, pipeline_info, set_pipeline_info
from backend.paths import ASSETS

diffusers_logging.set_verbosity_error()
diffusers_logging.disable_progress_bar()
transformers_logging.set_verbosity_error()
transformers_logging.disable_progress_bar()

SHAPES_DIR = ASSETS / "shapes-sd"
# the embedded models: source name -> folder, and the command that trains it
EMBEDDED = {"shapes": (SHAPES_DIR, "python -m backend.world.train"),
            "shapes-dit": (ASSETS / "shapes-dit", "python -m backend.world.train_dit")}
RANDOM_ARCHS = ("sd15-arch", "tiny-arch", *DIT_ARCHS)
SINGLE_FILE_EXTS = (".safetensors", ".ckpt")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Families Speedlab recognises; every method (generate, deepcache, quant, consistency) works on each of them.
FAMILIES = {
    "sd1": "Stable Diffusion 1.x layout (4 levels, conv projections, one head size)",
    "sd2": "Stable Diffusion 2.x layout (linear projections, per-block heads, often v-prediction)",
    "sdxl": "SDXL (two text encoders, pooled text + size/crop micro-conditioning)",
    "unet": "another text-conditioned U-Net (e.g. shapes-sd, fewer levels)",
    "pixart": "PixArt-α / PixArt-Σ transformer (T5 text, adaLN-single, epsilon prediction)",
    "sd3": "Stable Diffusion 3 / 3.5 MMDiT (CLIP-L + CLIP-G + T5, flow matching)",
    "flux": "Flux MMDiT (CLIP + T5, flow matching; guidance-distilled: no classifier-free guidance)",
}
UNET_FAMILIES = ("sd1", "sd2", "sdxl", "unet")
DIT_FAMILIES = ("pixart", "sd3", "flux")
FLOW_FAMILIES = ("sd3", "flux")  # flow-matching models: FlowMatch schedulers only
_TRANSFORMERS = {PixArtTransformer2DModel: "pixart", SD3Transformer2DModel: "sd3", FluxTransformer2DModel: "flux"}
SD_DOWN = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
SD_UP = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_allow_pickle = False  # set by the CLI's --allow-pickle; pickled weights then load with torch weights_only=True


def allow_pickle(enabled: bool) -> None:
    """Let local folders with only pickled (.bin) weights load (torch.load with weights_only=True)."""
    global _allow_pickle
    _allow_pickle = bool(enabled)


def _check_no_pickle_only(path: Path) -> None:
    """ModelError when a component folder holds pickled weights and no safetensors (unless allowed)."""
    if _allow_pickle:
        return
    for folder in [path, *(p for p in path.iterdir() if p.is_dir())]:
        files = [f for f in folder.iterdir() if f.is_file()]
        pickled = [f.name for f in files if f.suffix in PICKLE_SUFFIXES]
        if pickled and not any(f.suffix == ".safetensors" for f in files):
            raise ModelError(f"folder {str(folder)!r} has only pickled weights ({pickled[0]}); allowed: safetensors "
                             "weights (convert them, or pass --allow-pickle to load them with weights_only=True)")


def model_defaults(pipe: DiffusionPipeline) -> dict:
    """Default steps / guidance / size a model ships (speedlab.json in its folder), else SD's."""
    return pipeline_info(pipe).defaults


def is_random_weights(pipe: DiffusionPipeline) -> bool:
    """True for the random-weight architectures (speed only: quality metrics refuse them)."""
    return pipeline_info(pipe).source in RANDOM_ARCHS


def _allowed_sources() -> str:
    return f"{', '.join([*EMBEDDED, *RANDOM_ARCHS])}, a local diffusers folder, a .safetensors single file, or a Hub id"


def check_source(source: str) -> None:
    """ModelError when ``source`` cannot be loaded here, found without loading it (a missing folder, an embedded
    model not trained yet, a Hub id not in the cache while offline)."""
    if source in RANDOM_ARCHS:
        return
    path = EMBEDDED[source][0] if source in EMBEDDED else Path(source)
    if path.is_file() and path.suffix.lower() in (".safetensors", ".ckpt"):
        return  # a single-file checkpoint: backend/single_file.py checks it when loading
    if source in EMBEDDED and not (path / "model_index.json").exists():
        raise ModelError(f"the embedded model {source!r} is missing at {path}; train it with {EMBEDDED[source][1]}")
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelError(f"folder {str(path)!r} is not a diffusers pipeline (no model_index.json)")
        return
    if source.startswith((".", "/", "~")):
        raise ModelError(f"model folder {source!r} does not exist; allowed: {_allowed_sources()}")
    if "/" not in source or source.count("/") > 1:
        raise ModelError(f"unknown model {source!r}; allowed: {_allowed_sources()} such as "
                         "runwayml/stable-diffusion-v1-5")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(source, "model_index.json"), str):
            raise ModelError(f"Hub model {source!r} is not in the local cache and the Hub is offline "
                             "(HF_HUB_OFFLINE=1)")


def denoiser(pipe: DiffusionPipeline) -> torch.nn.Module:
    """The network that denoises: ``pipe.unet`` (U-Net families) or ``pipe.transformer`` (DiT families)."""
    return getattr(pipe, denoiser_name(pipe))


def denoiser_name(pipe: DiffusionPipeline) -> str:
    """The pipeline component that denoises: "unet" or "transformer"; ValueError for a pipeline with neither."""
    for name in ("unet", "transformer"):
        if getattr(pipe, name, None) is not None:
            return name
    raise ValueError(f"pipeline {type(pipe).__name__} has no U-Net and no transformer; allowed: a text-to-image "
                     f"pipeline of the families {', '.join(FAMILIES)}")


def set_denoiser(pipe: DiffusionPipeline, module: torch.nn.Module) -> None:
    """Replace the pipeline's denoiser (a private copy, a student) in place."""
    setattr(pipe, denoiser_name(pipe), module)


def call_timestep(net: torch.nn.Module, args: tuple, kwargs: dict):
    """The scheduler timestep of one denoiser call, from its ``timestep`` argument (Flux's pipeline passes t / 1000,
    the other families t itself); None for a call without one."""
    t = kwargs["timestep"] if "timestep" in kwargs else args[1] if len(args) > 1 else None
    return t * 1000 if t is not None and isinstance(net, FluxTransformer2DModel) else t


def is_dit(pipe: DiffusionPipeline) -> bool:
    """True for the transformer (DiT) families."""
    return model_family(pipe) in DIT_FAMILIES


def model_family(pipe: DiffusionPipeline) -> str:
    """sd1 / sd2 / sdxl / unet (another text-conditioned U-Net), pixart / sd3 / flux (transformers), or
    "unsupported" (another transformer, an unconditional U-Net, …)."""
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None:
        return next((f for cls, f in _TRANSFORMERS.items() if isinstance(transformer, cls)), "unsupported")
    unet = getattr(pipe, "unet", None)
    if not isinstance(unet, UNet2DConditionModel):
        return "unsupported"
    cfg = unet.config
    if cfg.addition_embed_type == "text_time":
        return "sdxl"
    if (tuple(cfg.down_block_types), tuple(cfg.up_block_types)) != (SD_DOWN, SD_UP) or cfg.addition_embed_type \
            or cfg.class_embed_type or cfg.in_channels != 4:
        return "unet"
    v_pred = getattr(pipe, "scheduler", None) is not None and \
        pipe.scheduler.config.get("prediction_type") == "v_prediction"
    if cfg.use_linear_projection or isinstance(cfg.attention_head_dim, (list, tuple)) or v_pred:
        return "sd2"
    return "sd1"


def has_shapes_judge(pipe: DiffusionPipeline) -> bool:
    """True for models that speak the Shapes world's vocabulary (shapes-sd, shapes-dit, tiny-arch): the Shapes judge,
    FD-Shapes and the reward can score them. Any other model is scored against the baseline (PSNR/SSIM) and by
    scorers."""
    if pipeline_info(pipe).source in (*EMBEDDED, "tiny-arch"):
        return True
    try:
        from backend.world.architecture import vocabulary

        return set(pipe.tokenizer.get_vocab()) == set(vocabulary())
    except Exception:  # any tokenizer without get_vocab or a different vocabulary
        return False


def load_pipeline(source: str = "shapes", device: str = "cpu", dtype: str = "float32", config: str | None = None,
                  allow_pickle: bool = False) -> DiffusionPipeline:
    """A fresh pipeline object for ``source``; weights are loaded once per process and shared.

    source: "shapes" / "shapes-dit" (the embedded models), a local diffusers folder, a single-file checkpoint in the
    original Stable Diffusion layout (``.safetensors``; ``.ckpt`` only with ``allow_pickle``), a Hub id (from the local
    cache when offline), or a random-weight build from config (:data:`RANDOM_ARCHS`). ``config``: for a single
    file, a local diffusers folder of the same family whose configs and tokenizers describe it.
    """
    if dtype not in DTYPES:
        raise ModelError(f"dtype {dtype!r} is not allowed; allowed: {', '.join(DTYPES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' asked for but no CUDA device is available; allowed here: cpu")
    base = _load_cached(source, device, dtype, config, allow_pickle)
    pipe = _direct_device_class(type(base))(**base.components)
    pipe.scheduler = type(base.scheduler).from_config(base.scheduler.config)
    set_pipeline_info(pipe, pipeline_info(base))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@cache
def _direct_device_class(cls: type[DiffusionPipeline]) -> type[DiffusionPipeline]:
    """``cls`` (same name, so saved pipelines say the same) whose execution device is the denoiser's.

    diffusers finds the execution device on every call by walking every module of every component in search
    of offload hooks: about 5 ms per image on this CPU, where a whole 4-step shapes-sd image takes about 85 ms.
    Speedlab never offloads; when a component does carry accelerate or diffusers hooks, diffusers' own search
    answers.
    """

    def _execution_device(self) -> torch.device:
        modules = [m for m in self.components.values() if isinstance(m, torch.nn.Module)]
        net = next((self.components[k] for k in ("unet", "transformer") if self.components.get(k) is not None), None)
        if net is None or any(_may_offload(m) for m in modules):
            return cls._execution_device.fget(self)
        return next(net.parameters()).device

    return type(cls.__name__, (cls,), {"_execution_device": property(_execution_device),
                                       "__module__": cls.__module__, "__doc__": cls.__doc__})


def _may_offload(module: torch.nn.Module) -> bool:
    """The module carries accelerate hooks, or diffusers hooks other than DeepCache's (which never moves weights:
    a DeepCache pipeline must not pay diffusers' per-call device search that its baseline does not)."""
    hooks = getattr(getattr(module, "_diffusers_hook", None), "hooks", {})
    return hasattr(module, "_hf_hook") or any(name != DEEPCACHE_HOOK for name in hooks)


@lru_cache(maxsize=4)
def _load_cached(source: str, device: str, dtype: str, config: str | None = None,
                 allow_pickle: bool = False) -> DiffusionPipeline:
    torch_dtype = DTYPES[dtype]
    if config is not None and Path(source).suffix.lower() not in SINGLE_FILE_EXTS:
        raise ModelError(f"model_config {config!r} is only for a single-file model (.safetensors / .ckpt); "
                         f"model {source!r} is not one: leave model_config out")
    if source in DIT_ARCHS:
        pipe = build_dit_pipeline(source)
        defaults = dict(ARCH_DEFAULTS[source])
    elif source in RANDOM_ARCHS:
        pipe = build_random_pipeline(source)
        defaults = {"steps": 20, "guidance": 7.5, "height": 256 if source == "sd15-arch" else 32,
                    "width": 256 if source == "sd15-arch" else 32}
    elif Path(source).suffix.lower() in SINGLE_FILE_EXTS:
        from backend.single_file import load_single_file

        pipe = load_single_file(Path(source), torch_dtype, config, allow_pickle)
        extra = Path(config) / "speedlab.json" if config else None
        defaults = json.loads(extra.read_text()) if extra and extra.exists() else {"steps": 50, "guidance": 7.5}
    else:
        path = EMBEDDED[source][0] if source in EMBEDDED else Path(source)
        if source in EMBEDDED and not (path / "model_index.json").exists():
            raise ModelError(f"the embedded model {source!r} is missing at {path}; train it with "
                             f"{EMBEDDED[source][1]}")
        pipe = _from_pretrained(source, path, torch_dtype)
        extra = path / "speedlab.json"
        defaults = json.loads(extra.read_text()) if extra.exists() else {"steps": 50, "guidance": 7.5}
    family = model_family(pipe)
    if family == "unsupported":
        net = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
        raise ModelError(f"model {source!r} ({type(pipe).__name__} with {type(net).__name__}) is not a family "
                         f"Speedlab supports; allowed: {', '.join(FAMILIES)} (text-conditioned U-Nets, "
                         "PixArt, SD3 and Flux transformers)")
    pipe.to(device=device, dtype=torch_dtype)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    set_pipeline_info(pipe, PipelineInfo(source=source, family=family, defaults=defaults))
    return pipe


def _from_pretrained(source: str, path: Path, torch_dtype: torch.dtype) -> DiffusionPipeline:
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelError(f"folder {str(path)!r} is not a diffusers pipeline (no model_index.json)")
        _check_no_pickle_only(path)
        try:
            return DiffusionPipeline.from_pretrained(path, dtype=torch_dtype, local_files_only=True,
                                                     safety_checker=None, requires_safety_checker=False,
                                                     use_safetensors=None if _allow_pickle else True)
        except (OSError, ValueError, TypeError, RuntimeError, SafetensorError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"folder {str(path)!r} could not be loaded as a diffusers pipeline: {first}") from exc
    if "/" not in source or source.startswith((".", "/")) or source.count("/") > 1:
        raise ModelError(f"unknown model {source!r}; allowed: {_allowed_sources()} such as "
                         "runwayml/stable-diffusion-v1-5")
    try:
        return DiffusionPipeline.from_pretrained(source, dtype=torch_dtype, safety_checker=None,
                                                 requires_safety_checker=False,
                                                 use_safetensors=None if _allow_pickle else True,
                                                 local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
    except Exception as exc:  # the Hub client raises many types (network, auth, missing files)
        raise ModelError(f"Hub model {source!r} could not be loaded (not in the local cache and the Hub is not "
                         f"reachable, or not a diffusers pipeline): {type(exc).__name__}") from exc


def build_random_pipeline(arch: str) -> StableDiffusionPipeline:
    """SD 1.5's architecture ("sd15-arch") or a tiny one with the same layout ("tiny-arch"), random weights."""
    from backend.world.architecture import build_tokenizer

    torch.manual_seed(0)
    if arch == "sd15-arch":
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2, sample_size=512,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        )
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                            pad_token_id=0, bos_token_id=1, eos_token_id=2))
        max_tokens = 77
    elif arch == "tiny-arch":
        unet = UNet2DConditionModel(
            sample_size=8, block_out_channels=(8, 16, 16, 16), layers_per_block=2, cross_attention_dim=16,
            attention_head_dim=2, norm_num_groups=4,
        )
        vae = AutoencoderKL(block_out_channels=(8, 8), latent_channels=4, norm_num_groups=4, sample_size=32,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, max_position_embeddings=16,
                                            pad_token_id=0, bos_token_id=1, eos_token_id=2))
        max_tokens = 16
    else:
        raise ModelError(f"unknown architecture {arch!r}; allowed: {', '.join(RANDOM_ARCHS)}")
    tokenizer = build_tokenizer(max_tokens)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
