"""Metrics: pure functions and streaming meters over numpy arrays (no torch)."""

from gres_cli.metrics.cosod import CoSODMeter
from gres_cli.metrics.masks import PRECISION_THRESHOLDS, PROTOCOLS, GRESMeter, Protocol, pair_iou

__all__ = ["PRECISION_THRESHOLDS", "PROTOCOLS", "CoSODMeter", "GRESMeter", "Protocol", "pair_iou"]
