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


def read_prompts(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file; ValueError (one line) for a missing, non-UTF-8 or empty file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompts file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"prompts file {str(path)!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompts file {str(path)!r} has no prompts; give one prompt per line")
    return prompts
