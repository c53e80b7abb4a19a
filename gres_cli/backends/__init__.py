"""The models gres runs, each behind the engine's model protocol (`protocol.py`):

- GRSer folders and Hub repos (`grser.py`, the trained path), and their ONNX exports
  (`grser_onnx.py`: onnxruntime, no torch, no transformers);
- CLIPSeg's and SAM 3's ONNX exports (`clipseg_onnx.py`, `sam3_onnx.py`, written by
  `clipseg_export.py`, `sam3_export.py`): the group rule in numpy (`group_rule.py`), no torch,
  no transformers;
- open-vocabulary segmenters from transformers with the group rule on top (`openvocab.py`):
  CLIPSeg (`clipseg.py`, the default model), SAM 3 (`sam3.py`),
  Grounding DINO + SAM (`grounded_sam.py`);
- a small "gres-backend" folder (`settings.py`) that names a backend checkpoint and holds the
  settings calibrated for it (margin m, experts K, group weight).

The kind of a model is read from its own config.json (`model_type`), never from its name, and
loads through the registry (`registry.py`): one line below per kind. Every load goes through
the Hub cache (`--revision`, HF_HUB_OFFLINE=1), safetensors only, never `trust_remote_code`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from gres_cli.backends.protocol import GroupModel
from gres_cli.backends.registry import (
    ModelFacts,
    check_for_push,
    export_onnx,
    load_model,
    model_facts,
    model_types,
    open_vocabulary_folder,
    open_vocabulary_types,
    register_model_type,
)
from gres_cli.errors import ModelLoadError
from gres_cli.model.kinds import GRES_BACKEND, GRSER, GRSER_ONNX

__all__ = [
    "DEFAULT_MODEL",
    "GRES_BACKEND",
    "GRSER",
    "GRSER_ONNX",
    "ModelFacts",
    "as_group_model",
    "backend_kind",
    "check_for_push",
    "default_model_facts",
    "export_onnx",
    "load_default_model",
    "load_model",
    "model_facts",
    "model_types",
    "open_vocabulary_types",
    "register_model_type",
]

register_model_type(GRSER, "gres_cli.backends.grser:GRSerAdapter")
register_model_type(GRSER_ONNX, "gres_cli.backends.grser_onnx:GRSerOnnxModel")
register_model_type("clipseg", "gres_cli.backends.clipseg:CLIPSegBackend", open_vocabulary=True)
register_model_type(
    "clipseg-onnx", "gres_cli.backends.clipseg_onnx:CLIPSegOnnxModel", open_vocabulary=True
)
register_model_type("sam3", "gres_cli.backends.sam3:Sam3Backend", open_vocabulary=True)
register_model_type("sam3-onnx", "gres_cli.backends.sam3_onnx:Sam3OnnxModel", open_vocabulary=True)
# facebook/sam3 ships one config for video; Sam3Model loads its image detector from it
register_model_type("sam3_video", "gres_cli.backends.sam3:Sam3Backend", open_vocabulary=True)
register_model_type(
    "grounding-dino", "gres_cli.backends.grounded_sam:GroundedSamBackend", open_vocabulary=True
)
register_model_type(GRES_BACKEND, "gres_cli.backends.settings:SettingsFolder")

#: with no --model and no GRES_MODEL: practical on a CPU, Apache-2.0, not gated
DEFAULT_MODEL = "CIDAS/clipseg-rd64-refined"


def backend_kind(checkpoint: str, revision: str | None = None) -> str:
    """The model_type of a backend checkpoint (its config.json only), or ModelLoadError."""
    return open_vocabulary_folder(checkpoint, revision)[0]


def load_default_model(revision: str | None = None, *, group: bool = True) -> GroupModel:
    """DEFAULT_MODEL, or one line naming it and both ways out when it cannot be had."""
    with _the_default_model():
        return load_model(DEFAULT_MODEL, revision, group=group)


def default_model_facts(revision: str | None = None, *, group: bool = True) -> ModelFacts:
    """`model_facts` of DEFAULT_MODEL, failing as `load_default_model` does."""
    with _the_default_model():
        return model_facts(DEFAULT_MODEL, revision, group=group)


@contextlib.contextmanager
def _the_default_model() -> Iterator[None]:
    try:
        yield
    except ModelLoadError as e:
        raise ModelLoadError(
            f"the default model {DEFAULT_MODEL} cannot be loaded ({e}): run once with the "
            "Hugging Face Hub reachable to cache it, pass --model DIR|ID (or set GRES_MODEL), "
            "or try the offline demo with --model examples/demo-model"
        ) from None


def as_group_model(model: Any) -> GroupModel:
    """A bare GRSer (nn.Module) wrapped in its adapter; any other model is a GroupModel already.
    (A GRSer exists only once its module is imported: an ONNX run never imports torch here.)"""
    grser = sys.modules.get("gres_cli.model.grser")
    if grser is not None and isinstance(model, grser.GRSer):
        from gres_cli.backends.grser import GRSerAdapter

        return GRSerAdapter(model)
    return model
