"""The canonical GRD format: typed records for `grd.json`, its JSON Schema, load and save.

A GRD dataset is a folder::

    DATASET/grd.json                          the manifest (this module)
    DATASET/images/<group>/<name>.jpg         any format Pillow reads
    DATASET/masks/<group>/<expr>/<name>.png   0/255 single-channel, same size as the image

Every expression names EVERY image of its group in `targets`: a mask path when the target is
present there, `None` (JSON null) when it is absent. All paths are relative to DATASET.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from grd_tools.errors import GRDError, SchemaError
from grd_tools.fsutil import atomic_write_text

MANIFEST = "grd.json"
FORMAT_VERSION = 1


@dataclass
class ImageRecord:
    """One image of a group. `file` is relative to the dataset root."""

    id: str
    file: str
    width: int
    height: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Expression:
    """One referring expression and its target in every image of the group (path or None)."""

    id: str
    text: str
    targets: dict[str, str | None]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Group:
    """A group of related images and the expressions annotated on all of them."""

    id: str
    images: list[ImageRecord]
    expressions: list[Expression]
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def image(self, image_id: str) -> ImageRecord:
        for img in self.images:
            if img.id == image_id:
                return img
        raise KeyError(image_id)


@dataclass
class Pair:
    """One (expression, image) pair: the unit that models predict and metrics score."""

    group: Group
    expression: Expression
    image: ImageRecord
    mask: str | None  # mask path relative to the root; None = target absent

    @property
    def present(self) -> bool:
        return self.mask is not None


@dataclass
class GRDDataset:
    """A GRD manifest in memory. `root` is the folder it was loaded from (None when built)."""

    groups: list[Group]
    name: str = ""
    license: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None

    def pairs(self, split: str | None = None) -> Iterator[Pair]:
        """Every (expression, image) pair, in manifest order; only `split` when given."""
        for g in self.groups:
            if split is not None and g.split != split:
                continue
            for e in g.expressions:
                for img in g.images:
                    yield Pair(g, e, img, e.targets.get(img.id))

    def splits(self) -> list[str | None]:
        return sorted({g.split for g in self.groups}, key=lambda s: (s is None, s or ""))

    def select(self, split: str | None) -> GRDDataset:
        """A shallow view holding only the groups of `split` (all groups when None)."""
        groups = self.groups if split is None else [g for g in self.groups if g.split == split]
        return GRDDataset(groups, self.name, self.license, dict(self.meta), self.root)

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": "grd", "version": FORMAT_VERSION}
        out["name"] = self.name
        out["license"] = self.license
        if self.meta:
            out["meta"] = self.meta
        out["groups"] = [_group_to_dict(g) for g in self.groups]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], root: Path | None = None) -> GRDDataset:
        """Build from parsed JSON. Call `schema_errors` first for untrusted input."""
        groups = []
        for g in data.get("groups", []):
            images = [
                ImageRecord(
                    i["id"], i["file"], int(i["width"]), int(i["height"]), i.get("meta", {})
                )
                for i in g.get("images", [])
            ]
            exprs = [
                Expression(e["id"], e["text"], dict(e.get("targets", {})), e.get("meta", {}))
                for e in g.get("expressions", [])
            ]
            groups.append(Group(g["id"], images, exprs, g.get("split"), g.get("meta", {})))
        return cls(
            groups, data.get("name", ""), data.get("license", ""), data.get("meta", {}), root
        )


def _group_to_dict(g: Group) -> dict[str, Any]:
    d: dict[str, Any] = {"id": g.id, "split": g.split}
    if g.meta:
        d["meta"] = g.meta
    d["images"] = []
    for i in g.images:
        rec: dict[str, Any] = {"id": i.id, "file": i.file, "width": i.width, "height": i.height}
        if i.meta:
            rec["meta"] = i.meta
        d["images"].append(rec)
    d["expressions"] = []
    for e in g.expressions:
        rec = {"id": e.id, "text": e.text, "targets": dict(e.targets)}
        if e.meta:
            rec["meta"] = e.meta
        d["expressions"].append(rec)
    return d


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema of `grd.json` that ships with the package."""
    text = resources.files("grd_tools").joinpath("schema/grd.schema.json").read_text("utf-8")
    return json.loads(text)


def schema_errors(data: Any) -> list[SchemaError]:
    """Every schema violation of a parsed manifest, each with the JSON path of its node.

    A valid manifest is recognised by `fits_schema`; `jsonschema` (over 100x slower: 3-4 CPU s
    per 1,000 images of a RefCOCO conversion) runs only on one that is not, to name each fault.
    """
    if fits_schema(data):
        return []
    errors = sorted(_validator().iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    return [SchemaError(e.message, e.json_path) for e in errors]


@cache
def _validator() -> Any:
    import jsonschema

    return jsonschema.Draft202012Validator(schema())


# `fits_schema` is grd.schema.json written out by hand; tests/test_startup_checks.py holds it to
# jsonschema's verdict on generated manifests. It may answer False for a manifest the schema
# accepts (a width of 2.0): jsonschema then decides, so only its True must never be wrong.
_ID = re.compile(schema()["$defs"]["id"]["pattern"])
_TOP_KEYS = frozenset(schema()["properties"])
_GROUP_KEYS = frozenset(schema()["$defs"]["group"]["properties"])
_IMAGE_KEYS = frozenset(schema()["$defs"]["image"]["properties"])
_EXPRESSION_KEYS = frozenset(schema()["$defs"]["expression"]["properties"])


def _is_id(value: Any) -> bool:
    return type(value) is str and bool(value) and _ID.search(value) is not None


def _is_size(value: Any) -> bool:
    return type(value) is int and value >= 1


def _has(node: dict, required: tuple[str, ...], allowed: frozenset[str]) -> bool:
    return all(key in node for key in required) and allowed.issuperset(node)


def fits_schema(data: Any) -> bool:
    """True only when `data` satisfies grd.schema.json (a direct check, no error messages)."""
    if not (type(data) is dict and _has(data, ("format", "version", "groups"), _TOP_KEYS)):
        return False
    if data["format"] != "grd" or type(data["version"]) is not int or data["version"] != 1:
        return False
    if any(k in data and type(data[k]) is not str for k in ("name", "license")):
        return False
    if "meta" in data and type(data["meta"]) is not dict:
        return False
    if type(data["groups"]) is not list:
        return False
    for g in data["groups"]:
        if not (type(g) is dict and _has(g, ("id", "images", "expressions"), _GROUP_KEYS)):
            return False
        split = g.get("split")
        if not _is_id(g["id"]) or (split is not None and type(split) is not str):
            return False
        if "meta" in g and type(g["meta"]) is not dict:
            return False
        if type(g["images"]) is not list or type(g["expressions"]) is not list:
            return False
        for i in g["images"]:
            if not (type(i) is dict and _has(i, ("id", "file", "width", "height"), _IMAGE_KEYS)):
                return False
            if not (_is_id(i["id"]) and type(i["file"]) is str and i["file"]):
                return False
            if not (_is_size(i["width"]) and _is_size(i["height"])):
                return False
            if "meta" in i and type(i["meta"]) is not dict:
                return False
        for e in g["expressions"]:
            if not (type(e) is dict and _has(e, ("id", "text", "targets"), _EXPRESSION_KEYS)):
                return False
            if not (_is_id(e["id"]) and type(e["text"]) is str and e["text"]):
                return False
            if "meta" in e and type(e["meta"]) is not dict:
                return False
            targets = e["targets"]
            if type(targets) is not dict:
                return False
            for mask in targets.values():
                if mask is not None and not (type(mask) is str and mask):
                    return False
    return True


def read_manifest(root: str | os.PathLike[str]) -> Any:
    """Parse `root/grd.json` as JSON (no schema check). Raises GRDError with a one-line message."""
    path = Path(root) / MANIFEST
    if not Path(root).is_dir():
        raise GRDError(f"{root}: not a folder (a GRD dataset is a folder holding {MANIFEST})")
    if not path.is_file():
        raise GRDError(f"{path}: missing (a GRD dataset holds a {MANIFEST} manifest)")
    try:
        return json.loads(path.read_text("utf-8"))
    except UnicodeDecodeError as e:
        raise GRDError(f"{path}: not UTF-8 text ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise GRDError(
            f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None
    except RecursionError:  # a manifest nests a few levels, never a thousand
        raise GRDError(f"{path}: invalid JSON: nested too deeply to parse") from None
    except OSError as e:
        raise GRDError(f"{path}: cannot read ({e.strerror})") from None


def load(root: str | os.PathLike[str]) -> GRDDataset:
    """Load and schema-check a GRD dataset folder. Raises GRDError/SchemaError (first fault).

    Only the manifest is read: file checks are `grd_tools.validate`'s job.
    """
    data = read_manifest(root)
    errors = schema_errors(data)
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more; run `gres grd validate`)" if len(errors) > 1 else ""
        raise SchemaError(f"{first.reason}{more}", first.json_path)
    return GRDDataset.from_dict(data, root=Path(root))


def save(dataset: GRDDataset, root: str | os.PathLike[str]) -> Path:
    """Write `root/grd.json` atomically (the folder is created if needed); returns its path."""
    path = Path(root) / MANIFEST
    atomic_write_text(path, json.dumps(dataset.to_dict(), indent=1, ensure_ascii=False) + "\n")
    return path
