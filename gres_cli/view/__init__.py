"""`gres view`: a static report site for a `gres segment` run, a `gres eval` report, or a GRD
dataset. No torch: the site is built from files (records, masks, reports, manifests)."""

from __future__ import annotations

from gres_cli.view.build import build_site, detect_kind, view_evaluation
from gres_cli.view.site import ViewError, default_out

__all__ = ["ViewError", "build_site", "default_out", "detect_kind", "view_evaluation"]
