"""Strict-JSON conversion shared by every report writer (manifests, metric reports, evaluation and study files)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def json_safe(obj: Any) -> Any:
    """Plain JSON types, recursively: NaN/inf → None, numpy scalars → Python, tuples → lists, keys and paths → str.

    Example:
        >>> json_safe({"a": (np.float32(1.5), float("nan")), 2: np.int64(3), "p": Path("x")})
        {'a': [1.5, None], '2': 3, 'p': 'x'}
    """
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj
