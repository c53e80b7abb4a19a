"""The site folder of `gres view`: static files, the page's data, and picture files.

A site is `index.html` + `app.js` + `review.js` + `style.css` (copied from this package),
`data.js` (the page's data as JSON, read by a <script> tag: file:// pages cannot fetch JSON) and
`img/`, two JPEGs per picture (a thumbnail and a large view). It is built in a temporary folder
beside `--out` and swapped in with one rename. Pictures are named by a hash of their inputs
(paths, sizes and modification times), so a re-run links the previous site's up-to-date
pictures instead of drawing them again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageFilter

from grd_tools.errors import GRDError
from grd_tools.fsutil import atomic_output_dir, atomic_write_text, link_or_copy
from grd_tools.imageio import open_image_reduced
from grd_tools.paths import is_within

#: marks a folder as a gres view site: only such a folder (or an empty one) is replaced
MARKER = ".gres-view"
STATIC_FILES = ("index.html", "review.js", "app.js", "style.css")
THUMB_PX = 224  # long side of a card's picture (cards are about 180 CSS px wide)
LARGE_PX = 1280  # long side of the picture opened on click
#: bump when the drawing changes, so that older sites' pictures are not reused
DRAWING_VERSION = 2
#: (fill, outline) colours; the outline keeps a mask visible on an object of the fill's colour
TINTS = {"prediction": ((255, 40, 40), (255, 235, 0)), "truth": ((40, 200, 90), (0, 230, 255))}


class ViewError(GRDError):
    """A `gres view` input or output the user must fix (reported in one line, exit 2)."""


@dataclass(frozen=True)
class MaskSource:
    """Where a picture's mask comes from: a PNG/NPY file, or COCO RLE from a record."""

    path: Path | None = None
    rle: dict[str, Any] | None = None
    threshold: int = 1  # grey levels at or above are the mask (128 for grey-level maps)

    def fingerprint(self) -> list[Any]:
        if self.path is not None:
            return ["file", self.threshold, *_file_fingerprint(self.path)]
        return ["rle", self.rle]

    def load(self) -> np.ndarray:
        """The mask as bool (height, width)."""
        if self.rle is not None:
            from pycocotools import mask as mask_utils

            rle = {"size": self.rle["size"], "counts": self.rle["counts"].encode()}
            return mask_utils.decode(rle).astype(bool)
        assert self.path is not None
        if self.path.suffix == ".npy":
            return np.load(self.path, allow_pickle=False).astype(bool)
        from grd_tools.imageio import read_mask

        return read_mask(self.path) >= self.threshold


@dataclass(frozen=True)
class Picture:
    """A photo, optionally with a mask tinted on it: one thumbnail and one large JPEG."""

    photo: Path
    mask: MaskSource | None = None
    tint: str = "prediction"

    @functools.cached_property  # one stat per file per build, and a key that cannot change
    def key(self) -> str:
        parts = [DRAWING_VERSION, THUMB_PX, LARGE_PX, self.tint, _file_fingerprint(self.photo)]
        parts.append(self.mask.fingerprint() if self.mask is not None else None)
        return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()[:20]

    def files(self) -> tuple[str, str]:
        """(thumbnail, large) paths relative to the site."""
        return f"img/{self.key}-t.jpg", f"img/{self.key}-l.jpg"


def _file_fingerprint(path: Path) -> list[Any]:
    try:
        st = path.stat()
    except OSError:
        return [str(path.absolute()), None, None]
    return [str(path.absolute()), st.st_size, st.st_mtime_ns]


def draw(picture: Picture) -> tuple[Image.Image, Image.Image]:
    """(thumbnail, large) of the photo with its mask tinted. Raises GRDError subclasses."""
    photo, full_size = open_image_reduced(picture.photo, LARGE_PX)
    large = _fit(photo, LARGE_PX)
    if picture.mask is not None:
        mask = picture.mask.load()
        if mask.shape != (full_size[1], full_size[0]):
            raise ViewError(f"{picture.photo}: mask {mask.shape[::-1]} differs from {full_size}")
        mask_img = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
        mask_img = mask_img.resize(large.size, Image.Resampling.NEAREST)
        fill, outline = TINTS[picture.tint]
        tinted = Image.blend(large, Image.new("RGB", large.size, fill), 0.45)
        large = Image.composite(tinted, large, mask_img)
        edge = ImageChops.subtract(mask_img.filter(ImageFilter.MaxFilter(3)), mask_img)
        large.paste(outline, mask=edge)
    return _fit(large, THUMB_PX), large


def _fit(img: Image.Image, side: int) -> Image.Image:
    """`img` shrunk so that its long side is at most `side` (never enlarged)."""
    scale = side / max(img.size)
    if scale >= 1:
        return img
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


@dataclass
class PictureResult:
    drawn: int = 0
    reused: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # key -> reason


def write_pictures(
    site: Path, pictures: Iterable[Picture], previous: Path | None, threads: int | None = None
) -> PictureResult:
    """Write each distinct picture's two JPEGs into `site/img/`, in parallel threads (Pillow
    decodes, resizes and encodes outside the GIL). Pictures of `previous` (the site being
    replaced) with the same key are linked instead of drawn again."""
    (site / "img").mkdir(parents=True, exist_ok=True)
    unique = {p.key: p for p in pictures}
    result = PictureResult()
    to_draw = []
    for key, picture in unique.items():
        if previous is not None and _reuse(previous, site, picture):
            result.reused += 1
        else:
            to_draw.append((key, picture))

    def work(item: tuple[str, Picture]) -> tuple[str, str | None]:
        key, picture = item
        try:
            thumb, large = draw(picture)
            thumb_rel, large_rel = picture.files()
            thumb.save(site / thumb_rel, "JPEG", quality=82)
            large.save(site / large_rel, "JPEG", quality=88)
        except (GRDError, OSError, ValueError) as e:
            return key, str(e)
        return key, None

    with ThreadPoolExecutor(threads or min(8, (os.cpu_count() or 1) + 1)) as pool:
        for key, error in pool.map(work, to_draw):
            if error is None:
                result.drawn += 1
            else:
                result.failed[key] = error
    return result


def _reuse(previous: Path, site: Path, picture: Picture) -> bool:
    rels = picture.files()
    if not all((previous / rel).is_file() for rel in rels):
        return False
    for rel in rels:
        link_or_copy(previous / rel, site / rel)
    return True


def default_out(path: Path) -> Path:
    """Where a site goes without --out: beside PATH, named `<PATH's name without suffix>-view`
    (never inside PATH, which stays untouched)."""
    path = path.absolute()
    return path.with_name(f"{path.stem if path.is_file() else path.name}-view")


def check_site_folder(out: Path, source: Path | None) -> Path | None:
    """The previous site at `out` (None: `out` is new or empty), or ViewError: `out` is a file,
    a non-empty folder that is not a gres view site, or a folder holding `source` (replacing
    it would delete the input)."""
    out = out.absolute()
    source = source.absolute() if source is not None else None
    if source is not None and is_within(source.resolve(), out.resolve()):
        raise ViewError(f"--out {out}: holds the input {source}; choose another folder")
    if source is not None and is_within(out.resolve(), source.resolve()):  # not part of it
        raise ViewError(f"--out {out}: lies inside the input {source}; choose another folder")
    if out.exists() and not out.is_dir():
        raise ViewError(f"--out {out}: is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ViewError(
                f"--out {out}: not empty and not a gres view site; give a new or empty folder"
            )
        return out
    return None


@contextlib.contextmanager
def open_site(out: Path, source: Path | None) -> Iterator[tuple[Path, Path | None]]:
    """Yield (temporary folder to build the site in, the previous site at `out` or None).

    On success the static files and the marker are added and the folder replaces `out` in one
    rename; on any error `out` is left as it was. Refused: `out` being a file, a non-empty
    folder that is not a gres view site, a folder holding `source` (replacing it would
    delete the input) or one inside it (the input is never modified)."""
    out = out.absolute()
    previous = check_site_folder(out, source)
    with atomic_output_dir(out, overwrite=True) as tmp:
        yield tmp, previous
        for name in STATIC_FILES:
            data = resources.files("gres_cli.view").joinpath("static", name).read_bytes()
            (tmp / name).write_bytes(data)
        atomic_write_text(tmp / MARKER, json.dumps({"source": str(source)}) + "\n")


def write_data(site: Path, data: dict[str, Any]) -> None:
    """The page's data as `data.js`. JSON with every non-ASCII character escaped and `<`
    written as \\u003c: it is read as JavaScript, and the page renders it as text only."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c")
    (site / "data.js").write_text(f"window.GRES_VIEW_DATA = {text};\n", "ascii")


def copy_files(site: Path, files: Iterable[tuple[Path, str]]) -> list[str]:
    """Copy (source, name) files into `site/files/`; returns the names copied."""
    (site / "files").mkdir(exist_ok=True)
    copied = []
    for src, name in files:
        shutil.copyfile(src, site / "files" / name)
        copied.append(f"files/{name}")
    return copied
