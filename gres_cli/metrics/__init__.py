"""Metrics as pure functions over numpy arrays (no torch): RES/GRES mask metrics."""

from gres_cli.metrics.masks import PRECISION_THRESHOLDS, GRESMeter, pair_iou

__all__ = ["PRECISION_THRESHOLDS", "GRESMeter", "pair_iou"]
