"""Speedlab: make text-to-image diffusion models fast and measure what each speed-up costs."""

import os

# Quiet third-party import-time chatter (e.g. transformers' torchvision notices); errors still show.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

# torchao (a peer backend, imported by diffusers' quantizers whenever it is installed) warns at import about CUDA-only
# extensions it cannot load on a CPU build and about a torch.compile deprecation: not the user's concern.
import logging  # noqa: E402

for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)
