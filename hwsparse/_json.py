"""JSON output shared by the CLI and saved files (tensors and numpy scalars become numbers)."""

from __future__ import annotations

import json
import math
from typing import Any


def dumps(payload: Any) -> str:
    """Indented JSON; NaN/inf (e.g. a diverged run's accuracy) are written as null."""
    return json.dumps(_clean(payload), indent=2, default=_default, allow_nan=False)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _default(value: Any) -> Any:
    if hasattr(value, "item"):
        return _clean(value.item())
    if isinstance(value, set):
        return sorted(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
