"""Small helpers shared by every layer of the library (no imports from the rest of backend)."""

from __future__ import annotations

import math


def jsonable(value):
    """JSON-safe copy: infinities become the strings "inf" / "-inf" (PSNR of identical images), NaN null."""
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
