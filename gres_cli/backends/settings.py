"""A "gres-backend" folder: config.json naming an open-vocabulary checkpoint and the settings
gres runs it with (margin m, experts K, group weight gamma), so that a calibrated setup loads
with `--model FOLDER` (or its Hub id) and no flags. Written by `gres model init --backend` and
`gres eval --calibrate ... --save-calibrated`."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gres_cli.errors import ModelLoadError

MODEL_TYPE = "gres-backend"


@dataclass
class BackendSettings:
    backend: str  # Hub id or local folder of the backend checkpoint
    revision: str | None = None
    margin: float | None = None  # None: the backend's default (2 t - 1)
    experts: int = 4
    group_weight: float = 1.0
    # grounding-dino only: the SAM checkpoint that draws the masks (default facebook/sam-vit-base)
    sam: str | None = None
    extra: dict[str, Any] | None = None  # free-form: how the settings were calibrated

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": MODEL_TYPE, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path | str = "config.json") -> BackendSettings:
        data = {k: v for k, v in data.items() if k != "model_type"}
        try:
            settings = cls(**data)
        except TypeError as e:
            raise ModelLoadError(f"{where}: not a gres-backend config ({e})") from None
        if not isinstance(settings.backend, str) or not settings.backend:
            raise ModelLoadError(f"{where}: gres-backend config names no backend")
        if settings.sam is not None and (not isinstance(settings.sam, str) or not settings.sam):
            raise ModelLoadError(f"{where}: sam must name a SAM checkpoint (a Hub id or folder)")
        if not isinstance(settings.experts, int) or settings.experts < 1:
            raise ModelLoadError(f"{where}: experts must be an integer >= 1")
        return settings

    def pin(self) -> BackendSettings:
        """Name the checkpoints so that this folder loads them from any working folder: a
        local folder by its absolute path, a Hub id with the commit it resolves to now."""
        self.backend, self.revision = pinned_checkpoint(self.backend, self.revision)
        if self.sam is not None and Path(self.sam).expanduser().is_dir():
            self.sam = os.path.abspath(Path(self.sam).expanduser())
        return self

    def write(self, folder: Path) -> None:
        """config.json and a short model card into `folder` (which exists, e.g. a temporary
        folder of `atomic_output_dir`)."""
        (folder / "config.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        m = "the backend's default" if self.margin is None else f"{self.margin:g}"
        (folder / "README.md").write_text(
            "---\nlibrary_name: gres\ntags: [gres, group-wise-referring-segmentation]\n---\n\n"
            f"# gres backend settings for `{self.backend}`\n\n"
            "Group-wise referring expression segmentation (GRES, Wu et al., ICCV 2023; not the\n"
            "generalized RES of gRefCOCO) with an open-vocabulary segmenter and gres's group\n"
            "rule. This folder holds settings only; the weights are the backend's own.\n\n"
            + _where(self.backend, self.revision)
            + (f"- masks drawn by: `{self.sam}`\n" if self.sam else "")
            + f"- margin m: {m}; experts K: {self.experts}; group weight: {self.group_weight:g}\n\n"
            f'Use: `gres segment PHOTOS "the red umbrella" --model <this folder or repo>`\n'
        )


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
    from gres_cli.backends import BACKENDS
    from gres_cli.model import hub

    folder = hub.resolve_model_dir(model_id, revision)
    config = hub.read_config(folder)
    kind = config.get("model_type")
    if kind == MODEL_TYPE:
        settings = BackendSettings.from_dict(config, folder)
    elif kind in BACKENDS:
        settings = BackendSettings(str(model_id), revision)
    else:
        raise ModelLoadError(
            f"{model_id}: a {kind or 'grser'} model keeps its margin in its own config.json "
            "(training calibrates it); --save-calibrated writes settings for backends"
        )
    settings.margin = margin
    settings.extra = {**(settings.extra or {}), "calibrated": note}
    return settings.pin()
