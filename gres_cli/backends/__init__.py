"""The models gres runs, each behind the engine's model protocol (`protocol.py`):

- GRSer folders and Hub repos (`grser.py`, the trained path), and their ONNX exports
  (`grser_onnx.py`: onnxruntime, no torch, no transformers);
- open-vocabulary segmenters from transformers with the group rule on top (`openvocab.py`):
  CLIPSeg (`clipseg.py`, the default model), SAM 3 (`sam3.py`),
  Grounding DINO + SAM (`grounded_sam.py`);
- a small "gres-backend" folder (`settings.py`) that names a backend checkpoint and holds the
  settings calibrated for it (margin m, experts K, group weight).

The kind of a model is read from its own config.json (`model_type`), never from its name.
Every load goes through the Hub cache (`--revision`, HF_HUB_OFFLINE=1), safetensors only,
never `trust_remote_code`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from gres_cli.errors import ModelLoadError
from gres_cli.model import onnx_spec

#: model_type -> "module:class" of its protocol implementation
BACKENDS = {
    "clipseg": "gres_cli.backends.clipseg:CLIPSegBackend",
    "sam3": "gres_cli.backends.sam3:Sam3Backend",
    # facebook/sam3 ships one config for video; Sam3Model loads its image detector from it
    "sam3_video": "gres_cli.backends.sam3:Sam3Backend",
    "grounding-dino": "gres_cli.backends.grounded_sam:GroundedSamBackend",
}
GRSER = "grser"
GRSER_ONNX = onnx_spec.MODEL_TYPE
GRES_BACKEND = "gres-backend"
#: with no --model and no GRES_MODEL: practical on a CPU, Apache-2.0, not gated
DEFAULT_MODEL = "CIDAS/clipseg-rd64-refined"


def model_types() -> list[str]:
    return [GRSER, GRSER_ONNX, *BACKENDS, GRES_BACKEND]


def backend_kind(checkpoint: str, revision: str | None = None) -> str:
    """The model_type of a backend checkpoint (its config.json only), or ModelLoadError."""
    return _backend_folder(checkpoint, revision)[0]


def _backend_folder(
    checkpoint: str, revision: str | None, token: str | bool | None = None
) -> tuple[str, Path]:
    """(model_type, resolved folder) of a backend checkpoint, or ModelLoadError."""
    from gres_cli.model import hub

    folder = hub.resolve_model_dir(checkpoint, revision, token=token)
    kind = hub.read_config(folder).get("model_type")
    if not isinstance(kind, str) or kind not in BACKENDS:
        raise ModelLoadError(
            f"{checkpoint}: model_type {kind!r} is not a backend ({', '.join(BACKENDS)})"
        )
    return kind, folder


def load_model(
    model_id: str | Path,
    revision: str | None = None,
    *,
    group: bool = True,
    token: str | bool | None = None,
) -> Any:
    """A GRSer or backend folder / Hub id as a `GroupModel` the engine runs. `group=False`
    turns the group-wise step off (the model alone, for comparison)."""
    from gres_cli.model import hub

    folder = hub.resolve_model_dir(model_id, revision, token=token)
    config = hub.read_config(folder)
    kind = config.get("model_type", GRSER if "swin_embed_dim" in config else None)
    if not isinstance(kind, str):  # a list would not even be looked up (issue 24)
        kind = None
    if kind == GRES_BACKEND:
        from gres_cli.backends.settings import BackendSettings

        settings = BackendSettings.from_dict(config, folder)
        paired = {"sam": settings.sam} if settings.sam else {}
        return _load_backend(
            settings.backend,
            settings.revision,
            group,
            token,
            experts=settings.experts,
            group_weight=settings.group_weight,
            margin=settings.margin,
            **paired,
        )
    if kind == GRSER:
        from gres_cli.backends.grser import GRSerModel
        from gres_cli.model.grser import GRSer

        return GRSerModel(GRSer.from_pretrained(folder), group=group)
    if kind == GRSER_ONNX:  # no torch, no transformers
        from gres_cli.backends.grser_onnx import GRSerOnnxModel

        return GRSerOnnxModel(folder, group=group)
    if kind in BACKENDS:
        return _construct(kind, folder, str(model_id), group, revision)
    raise ModelLoadError(
        f"{model_id}: model_type {kind!r} is not one gres runs ({', '.join(model_types())})"
    )


def load_default_model(revision: str | None = None, *, group: bool = True) -> Any:
    """DEFAULT_MODEL, or one line naming it and both ways out when it cannot be had."""
    try:
        return load_model(DEFAULT_MODEL, revision, group=group)
    except ModelLoadError as e:
        raise ModelLoadError(
            f"the default model {DEFAULT_MODEL} cannot be loaded ({e}): run once with the "
            "Hugging Face Hub reachable to cache it, pass --model DIR|ID (or set GRES_MODEL), "
            "or try the offline demo with --model examples/demo-model"
        ) from None


def _load_backend(
    checkpoint: str, revision: str | None, group: bool, token: Any, **settings: Any
) -> Any:
    kind, folder = _backend_folder(checkpoint, revision, token)
    if "sam" in settings and kind != "grounding-dino":
        raise ModelLoadError(f"{checkpoint}: a sam checkpoint pairs with grounding-dino only")
    return _construct(kind, folder, checkpoint, group, revision, **settings)


def _construct(
    kind: str,
    folder: Path,
    checkpoint: str,
    group: bool,
    revision: str | None = None,
    **settings: Any,
) -> Any:
    from transformers.utils import logging as hf_logging

    module, name = BACKENDS[kind].split(":")
    cls = getattr(importlib.import_module(module), name)
    hf_logging.disable_progress_bar()  # stderr holds gres's own progress and one-line errors
    try:
        model = cls(folder, checkpoint, group=group, **settings)
    except (OSError, ValueError, KeyError) as e:  # transformers' loading faults
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{checkpoint}: cannot load as {kind} ({first})") from None
    model.config["revision"] = revision
    return model


def as_group_model(model: Any) -> Any:
    """A GroupModel as is; a bare GRSer (nn.Module) wrapped in its adapter. (A GroupModel is
    told by its methods, so that an ONNX model never imports torch to be recognised.)"""
    if hasattr(model, "first_pass"):
        return model
    from gres_cli.model.grser import GRSer

    if isinstance(model, GRSer):
        from gres_cli.backends.grser import GRSerModel

        return GRSerModel(model)
    return model
