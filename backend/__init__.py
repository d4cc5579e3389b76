"""Speedlab: make text-to-image diffusion models fast and measure what each speed-up costs."""

import os

# Quiet third-party import-time chatter (e.g. transformers' torchvision notices); errors still show.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
