"""What kind of model a folder holds: the `model_type` of its config.json, never its name.

The constants every layer shares (the model, the backends, the CLI), torch-free, so that a
lower layer never imports a higher one to name a kind.
"""

from __future__ import annotations

from typing import Any

from gres_cli.model import onnx_spec

GRSER = "grser"
GRSER_ONNX = onnx_spec.MODEL_TYPE
#: a settings folder naming an open-vocabulary checkpoint (gres_cli.backends.settings)
GRES_BACKEND = "gres-backend"


def model_kind(config: dict[str, Any]) -> str | None:
    """The kind of a model from its config.json: its `model_type`; a GRSer folder written
    before configs carried one is told by its Swin settings. None: no kind gres knows of."""
    return config.get("model_type", GRSER if "swin_embed_dim" in config else None)
