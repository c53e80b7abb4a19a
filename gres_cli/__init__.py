"""gres: group-wise referring expression segmentation (GRES, Wu et al., ICCV 2023).

"GRES" here is GROUP-wise RES: one expression, a group of related images; the described object
is segmented in every image that has it and declared absent elsewhere. It is not the GENERALIZED
RES of gRefCOCO/ReLA (one image, zero or more targets).

`from gres_cli import GRSer, GRSerConfig, load_model` imports torch on first use only, so the CLI
starts fast. `load_model(ID_OR_DIR)` loads any model gres runs (GRSer, an open-vocabulary
backend, a gres-backend settings folder) for the engine (`gres_cli.inference.engine`).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "GRSer": "gres_cli.model.grser",
    "GRSerConfig": "gres_cli.model.config",
    "load_model": "gres_cli.backends",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gres_cli' has no attribute {name!r}")


__all__ = ["GRSer", "GRSerConfig", "__version__", "load_model"]
