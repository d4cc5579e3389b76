"""Reward models behind one interface: ``load_reward(name)(images_01, prompts) -> scores (N,)``, differentiable.

- ``shapes``: the Shapes world's reward model (``backend.metrics.quality.reward``); never the judge that
  ``prompt_accuracy`` uses, so a student trained on it does not thereby fool the metric.
- ``hpsv2``, ``imagereward``, ``pickscore``, ``clip``: the paper's human-preference / alignment rewards, built
  only from weights already on this machine (``assets/evaluators/<name>/`` or the Hugging Face cache). Nothing
  is downloaded; when the weights are missing the error names them and where they are looked for.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from backend.models import ASSETS

EVALUATORS = ASSETS / "evaluators"
REWARD_NAMES = ("shapes", "hpsv2", "imagereward", "pickscore", "clip")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HUB_IDS = {
    "clip": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    "pickscore": "yuvalkirstain/PickScore_v1",
}


class RewardError(ValueError):
    """An unknown reward or one whose weights are missing; the message names what is needed."""


class RewardModel(Protocol):
    name: str

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor: ...


class FunctionReward(torch.nn.Module):
    """Wraps a differentiable ``fn(images_01 N×3×H×W, prompts) -> (N,)`` as a reward model."""

    def __init__(self, name: str, fn: Callable[[torch.Tensor, list[str]], torch.Tensor], modules=()):
        super().__init__()
        self.name, self.fn = name, fn
        self.held = torch.nn.ModuleList([m for m in modules if isinstance(m, torch.nn.Module)])
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.fn(images, prompts).reshape(-1).float()


def load_reward(name: str, device: str | torch.device = "cpu") -> FunctionReward:
    """The reward model ``name``; RewardError when unknown or when its weights are not on this machine."""
    loaders = {"shapes": _shapes, "clip": _clip, "pickscore": _pickscore, "hpsv2": _hpsv2,
               "imagereward": _imagereward}
    if name not in loaders:
        raise RewardError(f"reward {name!r} is unknown; allowed: {', '.join(REWARD_NAMES)}")
    return loaders[name](torch.device(device))


def check_reward_available(name: str) -> None:
    """Raise RewardError early (before any training) if ``name`` cannot be built here."""
    load_reward(name)


# --- shapes -----------------------------------------------------------------------------------------------------

def _shapes(device: torch.device) -> FunctionReward:
    weights = EVALUATORS / "reward.safetensors"
    if not weights.is_file():
        raise RewardError(f"reward 'shapes' needs the Shapes reward-model weights at {weights}, which are missing; "
                          "train them with python -m backend.world.train --stage reward then --stage export")
    from backend.metrics import quality

    net = quality.reward_model()
    if isinstance(net, torch.nn.Module):
        net.to(device)

    def fn(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        try:
            return quality.reward(images, prompts)
        except quality.QualityUnavailable as exc:
            raise RewardError(f"reward 'shapes' scores Shapes-world prompts only ({exc}); train on Shapes data "
                              f"(--data shapes) or pick another reward; allowed: {', '.join(REWARD_NAMES)}, "
                              "none") from None

    return FunctionReward("shapes", fn, (net,))


# --- CLIP-family rewards (transformers, local weights only) ---------------------------------------------------------

def _local_hf(name: str, repo: str, what: str) -> str:
    local = EVALUATORS / name
    if (local / "config.json").is_file():
        return str(local)
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo, local_files_only=True, allow_patterns=["*.json", "*.safetensors", "*.txt"])
        if any(Path(path).glob("*.safetensors")):
            return path
    except Exception:  # not in the cache: the hub client raises several types
        pass
    raise RewardError(f"reward {name!r} needs the {what} weights ({repo}, safetensors) in {local} or in the local "
                      f"Hugging Face cache; they are missing (download them while online, e.g. "
                      f"`huggingface-cli download {repo}`)")


def _clip_preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    x = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False,
                                        antialias=True)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _clip_score_fn(model, tokenizer, device: torch.device, scale: Callable[[], torch.Tensor]):
    def fn(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        size = model.config.vision_config.image_size
        img = model.get_image_features(pixel_values=_clip_preprocess(images, size).to(device))
        tok = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(device)
        txt = model.get_text_features(**tok)
        img, txt = getattr(img, "pooler_output", img), getattr(txt, "pooler_output", txt)
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return scale() * (img * txt).sum(-1)

    return fn


def _clip(device: torch.device) -> FunctionReward:
    from transformers import AutoTokenizer, CLIPModel

    path = _local_hf("clip", HUB_IDS["clip"], "OpenCLIP ViT-H-14")
    model = CLIPModel.from_pretrained(path, local_files_only=True, use_safetensors=True).to(device).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return FunctionReward("clip", _clip_score_fn(model, tok, device, lambda: torch.tensor(1.0)), (model,))


def _pickscore(device: torch.device) -> FunctionReward:
    from transformers import AutoTokenizer, CLIPModel

    path = _local_hf("pickscore", HUB_IDS["pickscore"], "PickScore_v1")
    tok_path = _local_hf("clip", HUB_IDS["clip"], "CLIP-ViT-H-14 tokenizer for PickScore")
    model = CLIPModel.from_pretrained(path, local_files_only=True, use_safetensors=True).to(device).eval()
    tok = AutoTokenizer.from_pretrained(tok_path, local_files_only=True)
    return FunctionReward("pickscore", _clip_score_fn(model, tok, device, lambda: model.logit_scale.exp()), (model,))


# --- HPSv2.1 and ImageReward (their own packages; safetensors weights only) ---------------------------------------

def _hpsv2(device: torch.device) -> FunctionReward:
    weights = EVALUATORS / "hpsv2" / "HPS_v2.1.safetensors"
    if not weights.is_file():
        raise RewardError(f"reward 'hpsv2' needs the HPSv2.1 weights as safetensors at {weights}; they are missing "
                          "(convert HPS_v2.1_compressed.pt from the HPSv2 release once, on a trusted machine)")
    try:
        import open_clip
    except ImportError as exc:
        raise RewardError("reward 'hpsv2' needs the open_clip package (pip install open_clip_torch)") from exc
    from safetensors.torch import load_file

    model, _, _ = open_clip.create_model_and_transforms("ViT-H-14", pretrained=None, device=device)
    model.load_state_dict(load_file(weights))
    model.eval()
    tokenizer = open_clip.get_tokenizer("ViT-H-14")

    def fn(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        img = model.encode_image(_clip_preprocess(images, 224).to(device), normalize=True)
        txt = model.encode_text(tokenizer(prompts).to(device), normalize=True)
        return (img * txt).sum(-1)

    return FunctionReward("hpsv2", fn, (model,))


def _imagereward(device: torch.device) -> FunctionReward:
    weights = EVALUATORS / "imagereward" / "ImageReward.safetensors"
    med = EVALUATORS / "imagereward" / "med_config.json"
    if not (weights.is_file() and med.is_file()):
        raise RewardError(f"reward 'imagereward' needs ImageReward-v1.0 as safetensors at {weights} with "
                          f"{med.name}; they are missing")
    try:
        from ImageReward import ImageReward as IRModel
    except ImportError as exc:
        raise RewardError("reward 'imagereward' needs the image-reward package (pip install image-reward)") from exc
    from safetensors.torch import load_file

    model = IRModel(med_config=str(med), device=device)
    model.load_state_dict(load_file(weights), strict=False)
    model.eval()

    def fn(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        tok = model.blip.tokenizer(prompts, padding="max_length", truncation=True, max_length=35,
                                   return_tensors="pt").to(device)
        emb = model.blip.visual_encoder(_clip_preprocess(images, 224).to(device))
        att = torch.ones(emb.shape[:-1], dtype=torch.long, device=device)
        out = model.blip.text_encoder(tok.input_ids, attention_mask=tok.attention_mask, encoder_hidden_states=emb,
                                      encoder_attention_mask=att, return_dict=True)
        r = model.mlp(out.last_hidden_state[:, 0, :]).squeeze(-1)
        r = (r - model.mean) / model.std
        return -torch.relu(2.0 - r)  # capped as in RG-LCD: no gradient once the score exceeds 2

    return FunctionReward("imagereward", fn, (model,))
