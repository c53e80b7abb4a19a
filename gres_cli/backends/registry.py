"""One loading path for every kind of model: each kind is a class registered under its
`model_type`, imported only when a folder of that kind is loaded (so `gres --help` stays fast
and an ONNX model never imports torch), and made with one constructor:

    cls.from_folder(folder, checkpoint, revision, group=..., token=..., **settings) -> GroupModel

`folder` is the resolved model folder, `checkpoint` the id or path it was asked by, `settings`
the gres-backend folder's (experts, group weight, margin, and the backend's own declared extras).
Adding a kind is one module and one line: `register_model_type("my-kind", "pkg.mod:MyModel")`.

A kind's class also declares, as classmethods, what `gres model push` checks before uploading
a folder (`check_folder(folder)`) and its ONNX export (`export_onnx(folder, checkpoint,
revision, out, opset, overwrite)`); `ModelKind`'s defaults raise `NotOffered`, which these
commands turn into one line naming the kind. `facts(folder, checkpoint, revision, ...)` (the
constructor's arguments) says what a run's settings need of the model (`ModelFacts`); its
default loads the model, and a kind whose weights are costly reads them off its config instead.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gres_cli.backends.protocol import GroupModel
from gres_cli.errors import GresError, ModelLoadError
from gres_cli.model import hub
from gres_cli.model.kinds import model_kind


class ModelClass(Protocol):
    """What a registered kind provides: its constructor from a folder, and the services of
    `ModelKind` (its defaults refuse them, or for `facts` load the model)."""

    @classmethod
    def from_folder(
        cls,
        folder: Path,
        checkpoint: str,
        revision: str | None,
        *,
        group: bool = True,
        token: str | bool | None = None,
        **settings: Any,
    ) -> GroupModel: ...

    @classmethod
    def facts(
        cls,
        folder: Path,
        checkpoint: str,
        revision: str | None,
        *,
        group: bool = True,
        token: str | bool | None = None,
        **settings: Any,
    ) -> ModelFacts: ...

    @classmethod
    def check_folder(cls, folder: Path) -> None: ...

    @classmethod
    def export_onnx(
        cls, folder: Path, checkpoint: str, revision: str | None, out: Path, opset: int,
        overwrite: bool = False,
    ) -> dict[str, Any]: ...  # fmt: skip


#: what `gres model export --format onnx` exports (its refusals name them)
EXPORTABLE = "GRSer, CLIPSeg and SAM 3 models (and gres-backend folders over CLIPSeg or SAM 3)"


class NotOffered(Exception):
    """Raised by `ModelKind`'s defaults only: the kind does not offer that service (distinct
    from a NotImplementedError deep inside an exporter, which is a fault, not a refusal)."""


@dataclass(frozen=True)
class ModelFacts:
    """What a run's settings.json and its option checks need of a model, as the loaded
    `GroupModel` holds them (its attributes of these names): the default K, the most experts it
    takes (None: any), the default margin m, the group weight gamma (None: none), and whether
    its group step is on. A Ray driver claims OUT with these alone: a head node need not hold
    torch, a GPU or the weights."""

    experts: int
    max_experts: int | None
    margin: float
    group_weight: float | None
    group: bool

    @classmethod
    def of(cls, model: Any) -> ModelFacts:
        """The facts of a loaded model (a GroupModel)."""
        return cls(model.experts, model.max_experts, model.margin, model.group_weight, model.group)


class ModelKind:
    """The base of a kind's class: what `gres model push` and `gres model export` ask of a
    kind that offers neither (a kind that does overrides the method), and its `facts`."""

    @classmethod
    def facts(
        cls,
        folder: Path,
        checkpoint: str,
        revision: str | None,
        *,
        group: bool = True,
        token: str | bool | None = None,
        **settings: Any,
    ) -> ModelFacts:
        """The `ModelFacts` of what `from_folder` with these arguments loads. This default
        loads it; a kind with costly weights (torch, transformers, gigabytes) overrides it to
        read them off its config, and a test holds the two equal."""
        model = cls.from_folder(  # type: ignore[attr-defined]
            folder, checkpoint, revision, group=group, token=token, **settings
        )
        return ModelFacts.of(model)

    @classmethod
    def check_folder(cls, folder: Path) -> None:
        """`gres model push`: refuse (GresError) a folder that would not load when pulled."""
        raise NotOffered

    @classmethod
    def export_onnx(
        cls, folder: Path, checkpoint: str, revision: str | None, out: Path, opset: int,
        overwrite: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        """`gres model export --format onnx`: write the export into `out`; its facts."""
        raise NotOffered


class OnnxExportKind(ModelKind):
    """The base of an ONNX export's kind: pushed once its graphs and tokenizer load (the
    constructor from the folder, `cls(folder)`), and exported already."""

    @classmethod
    def check_folder(cls, folder: Path) -> None:
        """`gres model push`: the export loads (its graphs in onnxruntime, its tokenizer)."""
        cls(folder)  # type: ignore[call-arg]

    @classmethod
    def export_onnx(
        cls, folder: Path, checkpoint: str, revision: str | None, out: Path, opset: int,
        overwrite: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        raise GresError(f"{checkpoint}: already an ONNX export")


@dataclass(frozen=True)
class ModelType:
    name: str  # the `model_type` of the kind's config.json
    target: str  # "module:Class" of its ModelClass
    # a checkpoint that a gres-backend settings folder may name (an open-vocabulary segmenter)
    open_vocabulary: bool = False

    def model_class(self) -> ModelClass:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


_TYPES: dict[str, ModelType] = {}


def register_model_type(name: str, target: str, *, open_vocabulary: bool = False) -> None:
    """Make folders whose config.json says `"model_type": name` load with the class `target`
    ("module:Class", imported on first load). Registering a name again replaces it."""
    if ":" not in target:
        raise ValueError(f"{target!r}: expected 'module:Class'")
    _TYPES[name] = ModelType(name, target, open_vocabulary)


def model_types() -> list[str]:
    """Every registered model_type, in registration order."""
    return list(_TYPES)


def open_vocabulary_types() -> list[str]:
    """The model_types a gres-backend settings folder may name."""
    return [t.name for t in _TYPES.values() if t.open_vocabulary]


def model_type(name: str | None, where: str | Path) -> ModelType:
    """The registered kind `name`, or a ModelLoadError naming the ones gres runs."""
    if not isinstance(name, str) or name not in _TYPES:  # a list is no name (issue 24)
        raise ModelLoadError(
            f"{where}: model_type {name!r} is not one gres runs ({', '.join(model_types())})"
        )
    return _TYPES[name]


def _kind_of(folder: Path, model_id: str | Path) -> ModelType:
    return model_type(model_kind(hub.read_config(folder)), model_id)


def load_model(
    model_id: str | Path,
    revision: str | None = None,
    *,
    group: bool = True,
    token: str | bool | None = None,
    **settings: Any,
) -> GroupModel:
    """Any model gres runs (a folder or Hub id of a registered kind) as a `GroupModel` the
    engine runs. `group=False` turns the group-wise step off (the model alone, for
    comparison); `settings` go to the kind's constructor (a backend's experts, margin...)."""
    folder = hub.resolve_model_dir(model_id, revision, token=token)
    kind = _kind_of(folder, model_id)
    return kind.model_class().from_folder(
        folder, str(model_id), revision, group=group, token=token, **settings
    )


def model_facts(
    model_id: str | Path,
    revision: str | None = None,
    *,
    group: bool = True,
    token: str | bool | None = None,
    **settings: Any,
) -> ModelFacts:
    """`ModelFacts.of(load_model(...))`, read without loading the weights where the kind can
    (`ModelKind.facts`)."""
    folder = hub.resolve_model_dir(model_id, revision, token=token)
    kind = _kind_of(folder, model_id)
    return kind.model_class().facts(
        folder, str(model_id), revision, group=group, token=token, **settings
    )


def open_vocabulary_folder(
    checkpoint: str, revision: str | None, token: str | bool | None = None
) -> tuple[str, Path]:
    """(model_type, resolved folder) of a checkpoint a settings folder may name, or
    ModelLoadError."""
    folder = hub.resolve_model_dir(checkpoint, revision, token=token)
    kind = hub.read_config(folder).get("model_type")
    if kind not in open_vocabulary_types():
        raise ModelLoadError(
            f"{checkpoint}: model_type {kind!r} is not a backend "
            f"({', '.join(open_vocabulary_types())})"
        )
    return kind, folder


def check_for_push(folder: Path) -> None:
    """Refuse (one line) a folder `gres model push` does not publish, or one that does not
    load: each kind checks its own folder (`check_folder`)."""
    kind = _kind_of(folder, folder)
    try:
        kind.model_class().check_folder(folder)
    except NotOffered:
        raise GresError(
            f"{folder}: a {kind.name} checkpoint; gres model push publishes GRSer models, ONNX "
            "exports and gres-backend settings folders (gres model init --backend)"
        ) from None


def export_onnx(
    model_id: str, out: Path, *, opset: int, revision: str | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """`gres model export MODEL OUT --format onnx` for any kind that exports (`export_onnx`);
    the export's facts (config.json's "onnx")."""
    folder = hub.resolve_model_dir(model_id, revision)
    kind = _kind_of(folder, model_id)
    try:
        return kind.model_class().export_onnx(
            folder, str(model_id), revision, out, opset, overwrite
        )
    except NotOffered:
        raise GresError(
            f"{model_id}: a {kind.name} model; ONNX export supports {EXPORTABLE}"
        ) from None
