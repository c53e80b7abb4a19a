"""Exceptions of the GRES engine. Each carries a one-line, user-facing message."""

from __future__ import annotations

from grd_tools.errors import GRDError


class GresError(GRDError):
    """A fault in a model, a request or an input, reported as one line (never a traceback)."""


class ModelLoadError(GresError):
    """A model folder or Hub repo that cannot be loaded (missing files, mismatched weights)."""
