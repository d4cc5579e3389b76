"""The built-in general caption list: 299 varied everyday captions written for Speedlab.

Used where a model that is not a Shapes-world model needs prompts and the user gave none: PTQ calibration,
EfficientDM fine-tuning and LCD's ``--data auto`` (teacher samples of these captions).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

CAPTIONS_FILE = Path(__file__).resolve().parent / "data" / "general_captions.txt"


@cache
def general_captions() -> tuple[str, ...]:
    return tuple(line.strip() for line in CAPTIONS_FILE.read_text(encoding="utf-8").splitlines() if line.strip())
