"""RefCOCO / RefCOCO+ / RefCOCOg / gRefCOCO -> GRD, read only.

SRC is one dataset folder of the REFER layout (`refcoco/`, `refcoco+/`, `refcocog/`, `grefcoco/`):
`instances.json` (COCO `images`, `annotations`, `categories` of the images the refs use) and one
refs file: `refs(unc).p`, `refs(google).p`, `refs(umd).p` (Python 2 pickles, read with
`grd_tools.safe_pickle`) or gRefCOCO's `grefs(unc).json`. The COCO train2014 photos are found
under `images` (default `SRC/images`); an image's path is its `file_name` in `instances.json`
(a ref's own `file_name` carries an annotation-id suffix and names no real file).

A ref is one object (RefCOCO) or set of objects (gRefCOCO: `ann_id` is a list, `[-1]` meaning
no target) with several sentences; each sentence becomes one GRD expression whose target on its
image is the union of the ref's annotation masks (crowd annotations skipped), or absent. The
sentences of a ref share its one mask file, `masks/<group>/ref-<ref_id>.png`.

Grouping (`group_by`):
- `image`: one group per image holding every sentence written for it: the single-image RES
  benchmark, unchanged, in group form.
- `category`: the images whose refs name one COCO category, in chunks of `group_size` images
  (sorted by image id). A sentence was written for one image; on the other images of its group
  it is recorded as absent, an assumption (another instance of the category may fit the
  sentence), flagged by `meta.source_image` so such pairs can be filtered.
Groups never straddle the refs' `split`s (train/val/testA/testB/test).
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grd_tools import safe_pickle
from grd_tools.convert import mark_absent, write_masks
from grd_tools.convert.coco import decode_segmentation
from grd_tools.errors import GRDError
from grd_tools.format import Expression, GRDDataset, Group, ImageRecord, save
from grd_tools.fsutil import link_or_copy
from grd_tools.paths import resolve_inside

INSTANCES = "instances.json"
GROUP_BY = ("image", "category")


def detect(src: Path) -> bool:
    return (src / INSTANCES).is_file() and bool(_refs_files(src))


def _refs_files(src: Path) -> list[Path]:
    return sorted([*src.glob("refs(*).p"), *src.glob("grefs(*).json")])


def _refs_path(src: Path, refs: str | None) -> Path:
    if refs:
        path = resolve_inside(src, refs)
        if not path.is_file():
            raise GRDError(f"{path}: no such refs file")
        return path
    found = _refs_files(src)
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise GRDError(f"{src}: found {len(found)} refs files ({names}); name one with --refs")
    return found[0]


def _load_refs(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".p":
        refs = safe_pickle.load(path)
    else:
        try:
            refs = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise GRDError(f"{path}: not JSON ({e})") from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise GRDError(f"{path}: expected a list of refs")
    return refs


def _ids(value: Any) -> list[int]:
    """`ann_id`/`category_id` are an int in RefCOCO, a list in gRefCOCO; -1 means none."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return [int(v) for v in values if v is not None and int(v) != -1]


@dataclass
class _Release:
    """One loaded REFER folder: COCO tables plus the sentences of each (split, image)."""

    src: Path
    image_root: Path
    images: dict[int, dict[str, Any]]
    anns: dict[int, dict[str, Any]]
    categories: dict[int, str]
    #: (split, image id) -> [(sentence, ref)], in refs order
    sentences: dict[tuple[str, int], list[tuple[dict[str, Any], dict[str, Any]]]]

    def category_of(self, ref: dict[str, Any]) -> str:
        cats = _ids(ref.get("category_id", -1)) or [
            int(self.anns[a]["category_id"]) for a in _ids(ref["ann_id"]) if a in self.anns
        ]
        return self.categories.get(cats[0], str(cats[0])) if cats else "no-target"

    def group(
        self,
        gid: str,
        split: str,
        keys: list[tuple[str, int]],
        category: str | None,
        dst: Path,
        masks: dict[str, MaskJob],
    ) -> Group:
        """Group `gid` of the images `keys`; only refs of `category` when given. The images are
        linked into `dst` now; each ref's mask is added to `masks` ({path: job}) for
        `write_masks`, one file for all of the ref's sentences."""
        images: list[ImageRecord] = []
        for _, iid in keys:
            info = self.images.get(iid)
            if info is None:
                raise GRDError(f"{self.src / INSTANCES}: no image {iid}, which a ref names")
            rel = f"images/{info['file_name']}"
            if not (dst / rel).exists():  # with category grouping an image can be in two groups
                link_or_copy(resolve_inside(self.image_root, str(info["file_name"])), dst / rel)
            images.append(ImageRecord(str(iid), rel, int(info["width"]), int(info["height"])))
        expressions: list[Expression] = []
        for key, img in zip(keys, images, strict=True):
            for sent, ref in self.sentences[key]:
                if category is not None and self.category_of(ref) != category:
                    continue
                sid = str(sent.get("sent_id", f"{ref['ref_id']}-{len(expressions)}"))
                targets: dict[str, str | None] = {i.id: None for i in images}
                parts = self.ref_parts(ref)
                if parts:
                    targets[img.id] = f"masks/{gid}/ref-{int(ref['ref_id'])}.png"
                    masks[targets[img.id]] = MaskJob(parts, img.height, img.width)
                text = str(sent.get("sent") or sent["raw"]).strip()
                meta: dict[str, Any] = {"ref_id": int(ref["ref_id"]), "source_image": img.id}
                if sent.get("raw") and sent["raw"] != text:
                    meta["raw"] = str(sent["raw"])
                expressions.append(Expression(sid, text, targets, meta))
        return Group(gid, images, expressions, split or None)

    def ref_parts(self, ref: dict[str, Any]) -> list[tuple[int, Any]]:
        """(annotation id, segmentation) of the ref's non-crowd annotations; [] for no target."""
        parts = []
        for aid in _ids(ref["ann_id"]):
            ann = self.anns.get(aid)
            if ann is None:
                raise GRDError(
                    f"{self.src / INSTANCES}: no annotation {aid}, which ref {ref['ref_id']} names"
                )
            if not ann.get("iscrowd"):
                parts.append((aid, ann["segmentation"]))
        return parts


@dataclass(frozen=True)
class MaskJob:
    """A ref's mask to rasterise: the union of its annotations' segmentations."""

    parts: list[tuple[int, Any]]
    height: int
    width: int


def _rasterise(instances: Path, job: MaskJob) -> Any:
    """The union of a ref's annotation masks (run in a worker process by `write_masks`)."""
    mask = None
    for aid, segmentation in job.parts:
        try:
            m = decode_segmentation(segmentation, job.height, job.width)
        except (ValueError, TypeError, KeyError) as e:
            raise GRDError(f"{instances}: annotation {aid}: {e}") from None
        mask = m if mask is None else mask | m
    return mask


def _load(src: Path, refs_path: Path, image_root: Path) -> _Release:
    try:
        doc = json.loads((src / INSTANCES).read_text(encoding="utf-8"))
        images = {int(i["id"]): i for i in doc["images"]}
        anns = {int(a["id"]): a for a in doc["annotations"]}
        categories = {int(c["id"]): str(c["name"]) for c in doc.get("categories", [])}
    except (ValueError, KeyError, TypeError) as e:
        raise GRDError(f"{src / INSTANCES}: not a COCO instances file ({e})") from None
    sentences: dict[tuple[str, int], list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(
        list
    )
    try:
        for ref in _load_refs(refs_path):
            for sent in ref["sentences"]:
                sentences[(str(ref.get("split", "")), int(ref["image_id"]))].append((sent, ref))
    except (KeyError, TypeError, ValueError) as e:
        raise GRDError(f"{refs_path}: a ref without {e}") from None
    return _Release(src, image_root, images, anns, categories, sentences)


def read(
    src: Path,
    dst: Path,
    group_by: str = "image",
    refs: str | None = None,
    images: str | Path | None = None,
    group_size: int = 10,
    progress: Callable[[int, int], None] | None = None,
    **_: Any,
) -> None:
    """`progress(done, total)` follows the masks being written."""
    if group_by not in GROUP_BY:
        raise GRDError(f"--group-by {group_by}: choose from {', '.join(GROUP_BY)}")
    if group_size < 1:
        raise GRDError(f"--group-size {group_size}: must be at least 1")
    image_root = Path(images) if images else src / "images"
    if not image_root.is_dir():
        raise GRDError(f"{image_root}: no such folder of COCO images (pass --images DIR)")
    refs_path = _refs_path(src, refs)
    release = _load(src, refs_path, image_root)

    members: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    for key in sorted(release.sentences):
        split, iid = key
        if group_by == "image":
            members[(split, str(iid))].append(key)
        else:
            for cat in sorted({release.category_of(ref) for _, ref in release.sentences[key]}):
                members[(split, cat)].append(key)

    groups: list[Group] = []
    masks: dict[str, MaskJob] = {}
    used: set[str] = set()
    for (split, name), keys in members.items():
        chunks = [keys] if group_by == "image" else _chunks(keys, group_size)
        for n, chunk in enumerate(chunks):
            gid = (name if group_by == "image" else f"{name}-{n:04d}").replace("/", "_")
            if gid in used:  # an image whose refs sit in two splits
                gid = f"{gid}-{split}"
            used.add(gid)
            category = None if group_by == "image" else name
            groups.append(release.group(gid, split, chunk, category, dst, masks))
    # a ref whose annotations rasterise to nothing on its image is absent there
    rasterise = functools.partial(_rasterise, src / INSTANCES)
    mark_absent(groups, write_masks(dst, masks, rasterise, progress))
    save(
        GRDDataset(
            groups,
            name=f"{src.resolve().name} {refs_path.name} (grouped by {group_by})",
            license="RefCOCO-family annotations; COCO images under their Flickr licences",
            meta={"source": "refcoco", "refs": refs_path.name, "group_by": group_by},
        ),
        dst,
    )


def _chunks(keys: list[Any], size: int) -> list[list[Any]]:
    return [keys[i : i + size] for i in range(0, len(keys), size)]
