"""Scorers for any model and any prompts, behind one interface; each loads LOCAL weights only.

- paired, against the same-seed baseline image: ``psnr_vs_baseline`` / ``ssim_vs_baseline`` (always available),
  ``lpips_vs_baseline`` (torchmetrics; needs torchvision and its AlexNet weights on disk);
- per image, with its prompt: ``clip_score`` (CLIP ViT-B/16) and ``pickscore`` (PickScore v1, a CLIP-H
  preference model), both through transformers. ImageReward and HPSv2 need their own packages (BLIP /
  open_clip), which are not installed here; they are not offered.

A scorer whose weights are not in the local Hugging Face cache is never downloaded: it is absent from the
metrics and ``unavailable()`` says why. Asking for one by name (``evaluate --scorers``) turns that reason into
a one-line error before any image is generated.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np
import torch

from backend.metadata import pipeline_info
from backend.metrics.pixels import QualityUnavailable, paired_pixels, psnr_ssim


class ScorerUnavailable(QualityUnavailable):
    """A scorer that cannot run here (weights not local, package missing); the message says which and why."""


def _local_snapshot(repo: str) -> str | None:
    """The local cache folder of a Hub repo, or None; never touches the network."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo, local_files_only=True)
    except Exception:  # LocalEntryNotFoundError and friends: not cached
        return None


def _uint8_nchw(images) -> torch.Tensor:
    return torch.as_tensor(np.asarray(images) * 255, dtype=torch.float32).round().to(torch.uint8).permute(0, 3, 1, 2)


@dataclass
class Scorer:
    """One metric. ``paired`` scorers compare with the same-seed baseline images; the others read the prompt."""

    name: str
    paired: bool = False
    higher_is_better: bool = True

    def unavailable(self) -> str | None:
        """None when the scorer can run here, else the reason (one line)."""
        return None

    def __call__(self, images, prompts: list[str], baseline=None) -> float:
        raise NotImplementedError


class PsnrSsim(Scorer):
    def __call__(self, images, prompts, baseline=None) -> float:
        psnr, ssim = psnr_ssim(images, baseline)
        return psnr if self.name == "psnr_vs_baseline" else ssim


class Lpips(Scorer):
    def unavailable(self) -> str | None:
        if importlib.util.find_spec("torchvision") is None:
            return "lpips_vs_baseline needs torchvision (not installed) for its AlexNet backbone"
        try:
            self._metric()
        except Exception as exc:  # torchvision fetches the AlexNet weights; offline that fails
            return f"lpips_vs_baseline: the AlexNet weights are not available locally ({type(exc).__name__})"
        return None

    def _metric(self):
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)

    def __call__(self, images, prompts, baseline=None) -> float:
        a = torch.as_tensor(np.asarray(images), dtype=torch.float32).permute(0, 3, 1, 2)
        b = torch.as_tensor(np.asarray(baseline), dtype=torch.float32).permute(0, 3, 1, 2)
        return float(self._metric()(a, b))


@dataclass
class HubScorer(Scorer):
    """A scorer whose weights live in a Hub repo (read from the local cache only)."""

    repo: str = ""

    def unavailable(self) -> str | None:
        if _local_snapshot(self.repo) is None:
            return f"{self.name}: weights {self.repo!r} are not in the local Hugging Face cache (nothing is downloaded)"
        return None


@dataclass
class ClipScorer(HubScorer):
    """A CLIP model scoring image–prompt agreement: ``clip_score`` = 100·max(cos, 0) (torchmetrics' definition,
    computed with transformers directly: torchmetrics 1.9 does not read transformers 5's CLIP outputs) and
    ``pickscore`` = logit_scale·cos (PickScore v1, a CLIP-H preference model; processor from ``processor_repo``)."""

    processor_repo: str = ""

    def unavailable(self) -> str | None:
        if self.processor_repo and _local_snapshot(self.processor_repo) is None:
            return f"{self.name}: processor {self.processor_repo!r} is not in the local Hugging Face cache"
        return super().unavailable()

    @torch.no_grad()
    def __call__(self, images, prompts, baseline=None) -> float:
        from transformers import AutoModel, AutoProcessor

        processor = AutoProcessor.from_pretrained(_local_snapshot(self.processor_repo or self.repo))
        model = AutoModel.from_pretrained(_local_snapshot(self.repo)).eval()
        pixels = processor(images=list(_uint8_nchw(images).permute(0, 2, 3, 1).numpy()), return_tensors="pt")
        text = processor(text=list(prompts), padding=True, truncation=True, return_tensors="pt")
        img, txt = model.get_image_features(**pixels), model.get_text_features(**text)
        img, txt = (getattr(f, "pooler_output", f) for f in (img, txt))  # transformers 5 returns output objects
        cos = (torch.nn.functional.normalize(img, dim=-1) * torch.nn.functional.normalize(txt, dim=-1)).sum(-1)
        if self.name == "clip_score":
            return float(100 * cos.clamp(min=0).mean())
        return float((model.logit_scale.exp() * cos).mean())


SCORERS: dict[str, Scorer] = {s.name: s for s in (
    PsnrSsim("psnr_vs_baseline", paired=True), PsnrSsim("ssim_vs_baseline", paired=True),
    Lpips("lpips_vs_baseline", paired=True, higher_is_better=False),
    ClipScorer("clip_score", repo="openai/clip-vit-base-patch16"),
    ClipScorer("pickscore", repo="yuvalkirstain/PickScore_v1", processor_repo="laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
)}
OPTIONAL = ("lpips_vs_baseline", "clip_score", "pickscore")


def require(names: list[str]) -> list[Scorer]:
    """The named scorers; ScorerUnavailable (one line) for an unknown name or one that cannot run here."""
    out = []
    for name in names:
        if name not in SCORERS:
            raise ScorerUnavailable(f"scorer {name!r} is unknown; allowed: {', '.join(SCORERS)}")
        reason = SCORERS[name].unavailable()
        if reason:
            raise ScorerUnavailable(f"scorer {reason}")
        out.append(SCORERS[name])
    return out


def score(images, prompts: list[str], baseline=None, names: list[str] | None = None) -> dict:
    """Metrics of every scorer that applies (paired ones need ``baseline``); with ``names`` only those (each must
    be available), else PSNR/SSIM plus each optional scorer that is available, the others listed with their
    reason under ``unavailable``."""
    chosen = require(names) if names is not None else [SCORERS["psnr_vs_baseline"], SCORERS["ssim_vs_baseline"]]
    unavailable: dict[str, str] = {}
    if names is None:
        for name in OPTIONAL:
            reason = SCORERS[name].unavailable()
            if reason:
                unavailable[name] = reason
            else:
                chosen.append(SCORERS[name])
    out: dict = {}
    pixel = {s.name for s in chosen if isinstance(s, PsnrSsim)}
    if pixel and baseline is not None:  # one pass, with the paired bootstrap intervals (``..._ci``)
        paired = paired_pixels(images, baseline)
        out.update({k: v for k, v in paired.items() if k.removesuffix("_ci") in pixel})
    for scorer in chosen:
        if scorer.name in pixel or (scorer.paired and baseline is None):
            continue
        out[scorer.name] = scorer(images, prompts, baseline)
    if unavailable:
        out["unavailable"] = unavailable
    return out


def judge_absent_reason(pipe) -> str | None:
    """None when the Shapes judge scores this model's images, else why the judge metrics are absent."""
    from backend.models import has_shapes_judge

    if has_shapes_judge(pipe):
        return None
    return (f"model {pipeline_info(pipe).source or '?'!r} is not a Shapes-world model: prompt_accuracy, "
            "attr_accuracy, fd_shapes and reward are absent (the Shapes judge only reads Shapes images); quality is "
            "measured against the same-seed baseline (psnr/ssim) and by the available scorers")
