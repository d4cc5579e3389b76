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


@pytest.fixture(scope="session")
def installed_speedlab(tmp_path_factory):
    """The package as a user gets it: ``pip install .`` of a copy of the source into a fresh virtual environment
    (``--system-site-packages`` reuses the installed dependencies, pip and setuptools; ``--no-index`` keeps it
    offline). Its bin/"""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    base = tmp_path_factory.mktemp("install")
    src = base / "src"  # a copy: the build leaves nothing (build/, *.egg-info) in the checkout
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in ("backend", "app", "speedlab", "assets"):
        shutil.copytree(root / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "requirements.txt", "README.md"):
        shutil.copy2(root / name, src / name)
    venv = base / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                   env=env)
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
                           "--no-build-isolation", str(src)], capture_output=True, text=True, env=env, cwd=base)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv / "bin"
