"""ToMe (Bolya & Hoffman, 2023): training-free token merging in the U-Net's transformer blocks, via ``tomesd``.

``apply(pipe, ToMeConfig(ratio=0.5))`` patches the denoiser in place (``tomesd.apply_patch``); ``remove(pipe)``
undoes it. Variant section: ``"tome": {"ratio": 0.5}``. Stacks with DeepCache (its partial evaluations run the
patched blocks) and with quantization (ToMe patches blocks, quantization swaps the layers inside them).
"""

from __future__ import annotations

from backend.methods.tome.config import ToMeConfig
from backend.models import denoiser

__all__ = ["ToMeConfig", "apply", "denoiser", "remove"]


def _tomesd():
    try:
        import tomesd
    except ImportError:
        raise ValueError("tome: the tomesd package is not installed; install it: pip install tomesd==0.1.3") from None
    return tomesd



def apply(pipe, config: ToMeConfig | dict | None = None) -> None:
    """Patch the pipeline's U-Net with token merging (in place; applying again re-patches with the new config)."""
    if not isinstance(config, ToMeConfig):
        config = ToMeConfig.from_dict(config)
    tomesd = _tomesd()
    unet = denoiser(pipe)
    tomesd.apply_patch(unet, ratio=config.ratio, max_downsample=config.max_downsample, sx=config.sx, sy=config.sy,
                       use_rand=config.use_rand)


def remove(pipe) -> None:
    """Undo the patch (no-op when not applied)."""
    _tomesd().remove_patch(denoiser(pipe))
