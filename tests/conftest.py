"""Shared fixtures: one CPU thread (CI has two cores), offline Hub, tiny random pipelines."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def tiny_pipe():
    """A fresh tiny random-weight SD-layout pipeline (4 resolution levels, cross-attention) with a private
    U-Net copy, so methods applied in one test never leak into another."""
    import copy

    from backend.models import load_pipeline

    pipe = load_pipeline("tiny-arch")
    pipe.unet = copy.deepcopy(pipe.unet)
    return pipe


@pytest.fixture
def shapes_available():
    from backend.models import SHAPES_DIR

    if not (SHAPES_DIR / "model_index.json").exists():
        pytest.skip("the embedded shapes-sd model is not in assets/ yet")
