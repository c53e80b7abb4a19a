"""`gres grd convert`: move datasets between GRD and the formats around it.

Every conversion goes through the canonical GRD layout: a reader turns SRC into a GRD folder, a
writer turns a GRD folder into DST. X -> Y for two non-GRD formats chains the two through a
temporary GRD folder. DST is written atomically; SRC is never modified.

Contract of a format module (`grd_tools/convert/<name>.py`):
- `read(src: Path, dst: Path, **options) -> None`: write a valid GRD dataset into the empty
  folder `dst` (copy or hard-link images with `fsutil.link_or_copy`, write masks as 0/255 PNG,
  many at once with `write_masks`, then `format.save`).
- `write(dataset: GRDDataset, dst: Path, **options) -> None`: write the format into the empty
  folder `dst`; `dataset.root` is where its files are.
- `detect(src: Path) -> bool` (optional): True when `src` looks like this format.
Unknown options are ignored (`**_`), so one CLI can pass every option to every module.
"""

from __future__ import annotations

import functools
import importlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grd_tools.errors import GRDError
from grd_tools.format import MANIFEST, GRDDataset, Group, load, save
from grd_tools.fsutil import atomic_output_dir, link_or_copy, refuse_overlap
from grd_tools.imageio import write_mask
from grd_tools.paths import resolve_inside
from grd_tools.validate import map_files, validate

#: formats `--to` accepts (readers and writers exist for each)
WRITABLE = ("grd", "coco", "hf", "cosod")
#: formats `--from` accepts; d3 and refcoco are read-only releases
READABLE = ("grd", "coco", "hf", "cosod", "d3", "refcoco")


def _module(fmt: str) -> Any:
    return importlib.import_module(f"grd_tools.convert.{fmt}")


def detect_format(src: Path) -> str:
    """Guess SRC's format from its layout; raise GRDError asking for `--from` when unsure."""
    if (src / MANIFEST).is_file():
        return "grd"
    for fmt in READABLE[1:]:
        try:
            mod = _module(fmt)
        except ModuleNotFoundError:
            continue
        detect = getattr(mod, "detect", None)
        if detect is not None and detect(src):
            return fmt
    raise GRDError(f"{src}: cannot tell its format; pass --from {'|'.join(READABLE)}")


def write_masks(
    dst: Path,
    jobs: dict[str, Any],
    rasterise: Callable[[Any], Any],
    progress: Callable[[int, int], None] | None = None,
) -> set[str]:
    """Write each mask of `jobs` ({path inside `dst`: what `rasterise` takes}) as a 0/255 PNG, on
    every core once there are many (`validate.map_files`): rasterising and PNG-encoding the masks
    is most of a release's conversion. `rasterise` must be picklable (a module-level function or
    a partial of one); it returns a mask, or None. `progress(done, total)` follows the masks.
    Returns the paths whose mask came out empty (nothing written there), for `mark_absent`."""
    items = list(jobs.items())
    written = map_files(functools.partial(_write_one, rasterise, dst), items, progress=progress)
    return {path for (path, _), ok in zip(items, written, strict=True) if not ok}


def _write_one(rasterise: Callable[[Any], Any], dst: Path, item: tuple[str, Any]) -> bool:
    path, job = item
    mask = rasterise(job)
    if mask is None or not mask.any():
        return False
    write_mask(resolve_inside(dst, path), mask)
    return True


def mark_absent(groups: list[Group], paths: set[str]) -> None:
    """Record as absent every target of `groups` whose mask file is one of `paths`."""
    if not paths:
        return
    for group in groups:
        for expression in group.expressions:
            for image, target in expression.targets.items():
                if target in paths:
                    expression.targets[image] = None


def read_grd(src: Path, dst: Path, **_: Any) -> None:
    """GRD -> GRD: copy (hard-link where possible) every referenced file, same relative paths."""
    dataset = load(src)
    for g in dataset.groups:
        for img in g.images:
            link_or_copy(resolve_inside(src, img.file), resolve_inside(dst, img.file))
        for e in g.expressions:
            for mask in e.targets.values():
                if mask is not None:
                    link_or_copy(resolve_inside(src, mask), resolve_inside(dst, mask))
    save(dataset, dst)


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    to: str,
    from_: str | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """Convert SRC (format `from_`, detected when None) into DST (format `to`). Returns DST."""
    src, dst = Path(src), Path(dst)
    if to not in WRITABLE:
        raise GRDError(f"--to {to}: unknown format (choose from {', '.join(WRITABLE)})")
    if not src.exists():
        raise GRDError(f"{src}: no such file or folder")
    from_ = from_ or detect_format(src)
    if from_ not in READABLE:
        raise GRDError(f"--from {from_}: unknown format (choose from {', '.join(READABLE)})")
    refuse_overlap(src, dst)
    reader = read_grd if from_ == "grd" else _module(from_).read
    try:
        _run(reader, src, dst, to, from_, overwrite, options)
    except OSError as e:  # a missing/unreadable file inside SRC: one line, DST never appears
        raise GRDError(f"{e.filename or src}: {e.strerror or e}") from None
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:
        # a reader met a file that breaks its format's shape (a missing key, a list where a
        # record goes): one line naming SRC, never a traceback; DST never appears
        detail = str(e).splitlines()[0] if str(e) else ""
        raise GRDError(
            f"{src}: not a readable {from_} dataset ({type(e).__name__}: {detail})"
        ) from None
    return dst


def _run(
    reader: Any, src: Path, dst: Path, to: str, from_: str, overwrite: bool, options: Any
) -> None:
    with atomic_output_dir(dst, overwrite=overwrite) as out:
        if to == "grd":
            reader(src, out, **options)
            refuse_invalid(out, src, from_)
        else:
            writer = _module(to).write
            if from_ == "grd":
                writer(load(src), out, **options)
            else:
                with tempfile.TemporaryDirectory(prefix=".grd-convert-", dir=out.parent) as tmp:
                    reader(src, Path(tmp), **options)
                    refuse_invalid(Path(tmp), src, from_)
                    writer(load(tmp), out, **options)


def refuse_invalid(grd: Path, src: Path, from_: str) -> None:
    """What a reader accepts must validate (issue 24: a mutated COCO file made a group with no
    images whose target named another group's image). Raises GRDError naming the first error
    of `gres grd validate` on what the reader wrote. Masks are not decoded (pixels are the
    readers' job: `write_mask` writes 0/255, an empty mask is written as absent); manifest
    structure and image/mask headers are checked, which is cheap beside writing the masks."""
    errors = validate(grd, check_pixels=False).errors
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise GRDError(
            f"{src}: read as {from_}, it makes an invalid GRD dataset: {first.message} "
            f"[{first.code} at {first.where}]{more}"
        )


__all__ = [
    "READABLE",
    "WRITABLE",
    "GRDDataset",
    "convert",
    "detect_format",
    "mark_absent",
    "read_grd",
    "write_masks",
]
