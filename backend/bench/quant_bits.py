"""The bit-widths ``bench quant`` and its modes (--cost, --sensitivity) take, parsed from ``--bits``."""

from __future__ import annotations

BITS = {"W8A8": (8, 8), "W4A8": (4, 8), "W4A4": (4, 4), "W2A8": (2, 8), "W8A4": (8, 4), "W6A6": (6, 6)}


def parse_bits(text: str) -> list[tuple[str, int, int]]:
    """(label, weight bits, activation bits) for each item of a comma list such as "W8A8,W4A4"."""
    out = []
    for item in [t.strip().upper() for t in text.split(",") if t.strip()]:
        if item not in BITS:
            raise ValueError(f"--bits {item!r} is not allowed; allowed: {', '.join(BITS)}")
        out.append((item, *BITS[item]))
    if not out:
        raise ValueError("--bits is empty; allowed: a comma list such as W8A8,W4A4")
    return out
