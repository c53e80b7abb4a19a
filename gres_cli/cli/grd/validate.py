"""`gres grd validate` (to be written)."""

from gres_cli.cli.grd import app  # noqa: F401
