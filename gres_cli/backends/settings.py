"""A "gres-backend" folder: config.json naming an open-vocabulary checkpoint and the settings
gres runs it with (margin m, experts K, group weight gamma), so that a calibrated setup loads
with `--model FOLDER` (or its Hub id) and no flags. Written by `gres model init --backend` and
`gres eval --calibrate ... --save-calibrated`."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gres_cli.backends import registry
from gres_cli.backends.protocol import GroupModel
from gres_cli.backends.registry import ModelKind, NotOffered
from gres_cli.errors import GresError, ModelLoadError
from gres_cli.model import hub
from gres_cli.model.kinds import GRES_BACKEND

MODEL_TYPE = GRES_BACKEND


@dataclass
class BackendSettings:
    backend: str  # Hub id or local folder of the backend checkpoint
    revision: str | None = None
    margin: float | None = None  # None: the backend's default (2 t - 1)
    experts: int = 4
    group_weight: float = 1.0
    # the backend's own settings (its declared `Settings`, e.g. Grounding DINO's `sam`), kept
    # at the top level of config.json; None values are left out (the backend's default)
    options: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] | None = None  # free-form: how the settings were calibrated

    def to_dict(self) -> dict[str, Any]:
        shared = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "options"}
        extra = shared.pop("extra")
        options = {k: v for k, v in self.options.items() if v is not None}
        return {"model_type": MODEL_TYPE, **shared, **options, "extra": extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path | str = "config.json") -> BackendSettings:
        if not isinstance(data, dict):
            raise ModelLoadError(f"{where}: not a gres-backend config (not a JSON object)")
        known = {f.name for f in fields(cls)} - {"options"}
        shared = {k: v for k, v in data.items() if k in known}
        options = {
            k: v for k, v in data.items() if k not in known | {"model_type"} and v is not None
        }
        try:
            settings = cls(**shared, options=options)
        except TypeError as e:
            raise ModelLoadError(f"{where}: not a gres-backend config ({e})") from None
        if not isinstance(settings.backend, str) or not settings.backend:
            raise ModelLoadError(f"{where}: gres-backend config names no backend")
        if type(settings.experts) is not int or settings.experts < 1:
            raise ModelLoadError(f"{where}: experts must be an integer >= 1")
        # each value is used as its type (a margin in arithmetic, a revision in a Hub call):
        # a config of another shape is refused here, in one line (issue 24)
        if settings.revision is not None and not (
            isinstance(settings.revision, str) and settings.revision
        ):
            raise ModelLoadError(f"{where}: revision must be a branch, tag or commit (text)")
        if settings.margin is not None and not _finite(settings.margin):
            raise ModelLoadError(f"{where}: margin must be a finite number or null")
        if not _finite(settings.group_weight):
            raise ModelLoadError(f"{where}: group_weight must be a finite number")
        if settings.extra is not None and not isinstance(settings.extra, dict):
            raise ModelLoadError(f"{where}: extra must be a JSON object or null")
        return settings

    def pin(self) -> BackendSettings:
        """Name the checkpoints so that this folder loads them from any working folder: a
        local folder by its absolute path, a Hub id with the commit it resolves to now."""
        self.backend, self.revision = pinned_checkpoint(self.backend, self.revision)
        sam = self.options.get("sam")  # Grounding DINO's mask drawer, a checkpoint too
        if isinstance(sam, str) and Path(sam).expanduser().is_dir():
            self.options["sam"] = os.path.abspath(Path(sam).expanduser())
        return self

    def write(self, folder: Path) -> None:
        """config.json and a short model card into `folder` (which exists, e.g. a temporary
        folder of `atomic_output_dir`)."""
        (folder / "config.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        m = "the backend's default" if self.margin is None else f"{self.margin:g}"
        own = "".join(f"- {k}: `{v}`\n" for k, v in self.options.items() if v is not None)
        (folder / "README.md").write_text(
            "---\nlibrary_name: gres\ntags: [gres, group-wise-referring-segmentation]\n---\n\n"
            f"# gres backend settings for `{self.backend}`\n\n"
            "Group-wise referring expression segmentation (GRES, Wu et al., ICCV 2023; not the\n"
            "generalized RES of gRefCOCO) with an open-vocabulary segmenter and gres's group\n"
            "rule. This folder holds settings only; the weights are the backend's own.\n\n"
            + _where(self.backend, self.revision)
            + own
            + f"- margin m: {m}; experts K: {self.experts}; group weight: {self.group_weight:g}\n\n"
            f'Use: `gres segment PHOTOS "the red umbrella" --model <this folder or repo>`\n'
        )


def _finite(value: Any) -> bool:
    """A JSON number that is a number (true/false are not) and finite."""
    return type(value) in (int, float) and math.isfinite(value)


class SettingsFolder(ModelKind):
    """The registered kind of a gres-backend folder: loads the backend it names, with its
    settings."""

    @classmethod
    def from_folder(
        cls,
        folder: Path,
        checkpoint: str,
        revision: str | None,
        *,
        group: bool = True,
        token: str | bool | None = None,
    ) -> GroupModel:
        return cls._on_backend("from_folder", folder, group, token)

    @classmethod
    def facts(
        cls,
        folder: Path,
        checkpoint: str,
        revision: str | None,
        *,
        group: bool = True,
        token: str | bool | None = None,
    ) -> registry.ModelFacts:
        """The backend's facts with these settings (its own `facts`: no weights)."""
        return cls._on_backend("facts", folder, group, token)

    @classmethod
    def _on_backend(cls, method: str, folder: Path, group: bool, token: str | bool | None) -> Any:
        """`method` ("from_folder" or "facts") of the class of the backend the folder names,
        given the folder's settings."""
        settings = BackendSettings.from_dict(hub.read_config(folder), folder)
        kind, backend = registry.open_vocabulary_folder(settings.backend, settings.revision, token)
        model_class = registry.model_type(kind, settings.backend).model_class()
        return getattr(model_class, method)(
            backend,
            settings.backend,
            settings.revision,
            group=group,
            token=token,
            experts=settings.experts,
            group_weight=settings.group_weight,
            margin=settings.margin,
            **settings.options,
        )

    @classmethod
    def check_folder(cls, folder: Path) -> None:
        """`gres model push`: the settings parse (the backend's weights are its own)."""
        BackendSettings.from_dict(hub.read_config(folder), folder / hub.CONFIG_FILE)

    @classmethod
    def export_onnx(
        cls, folder: Path, checkpoint: str, revision: str | None, out: Path, opset: int,
        overwrite: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        """`gres model export`: the backend it names, exported by its own kind with these
        settings (the kind reads them from `folder`); a kind that exports nothing is one line."""
        settings = BackendSettings.from_dict(hub.read_config(folder), folder / hub.CONFIG_FILE)
        kind, _ = registry.open_vocabulary_folder(settings.backend, settings.revision)
        try:
            return (
                registry.model_type(kind, settings.backend)
                .model_class()
                .export_onnx(folder, checkpoint, revision, out, opset, overwrite)
            )
        except NotOffered:
            raise GresError(
                f"{checkpoint}: settings for a {kind} backend; ONNX export supports "
                f"{registry.EXPORTABLE}"
            ) from None


def pinned_checkpoint(checkpoint: str, revision: str | None) -> tuple[str, str | None]:
    """(checkpoint, revision) as a settings folder stores them: a local folder as its absolute
    path (`clip` typed in one folder is nothing, or another model, in the next); a Hub id as
    the id with the commit `revision` resolves to now (a branch moves)."""
    from gres_cli.model import hub

    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return os.path.abspath(path), revision
    folder = hub.resolve_model_dir(checkpoint, revision)
    commit = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else revision
    return checkpoint, commit


def _where(backend: str, revision: str | None) -> str:
    """The card's line naming the backend, saying how it is found."""
    if Path(backend).is_absolute():
        return (
            f"- backend: `{backend}`, a local folder stored by its absolute path: found from "
            "any working folder on this machine, not after it moves\n"
        )
    return f"- backend: `{backend}` from the Hugging Face Hub, revision {revision or 'default'}\n"


def calibrated(
    model_id: str, revision: str | None, margin: float, note: dict[str, Any]
) -> BackendSettings:
    """The settings of `model_id` (a backend checkpoint or a gres-backend folder) with the
    calibrated margin m; `note` says how it was calibrated (metric, dataset, split)."""
    folder = hub.resolve_model_dir(model_id, revision)
    config = hub.read_config(folder)
    kind = config.get("model_type")
    if kind == MODEL_TYPE:
        settings = BackendSettings.from_dict(config, folder)
    elif kind in registry.open_vocabulary_types():
        settings = BackendSettings(str(model_id), revision)
    else:
        raise ModelLoadError(
            f"{model_id}: a {kind or 'grser'} model keeps its margin in its own config.json "
            "(training calibrates it); --save-calibrated writes settings for backends"
        )
    settings.margin = margin
    settings.extra = {**(settings.extra or {}), "calibrated": note}
    return settings.pin()
