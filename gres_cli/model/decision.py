"""The paper's presence decision, shared by GRSer, its ONNX export and every backend."""

from __future__ import annotations

from typing import Any


def presence(d_pos: Any, d_neg: Any, margin: float) -> Any:
    """Positive iff d_pos + m < d_neg (torch tensors, numpy arrays or floats alike)."""
    return d_pos + margin < d_neg
