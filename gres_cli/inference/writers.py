"""Outputs of `gres segment`: mask files, overlays and JSONL records, written atomically.

`OUT/records.jsonl` lists every finished image (one JSON record per line, flushed as images
finish). Which answers are done, stale or refused, and `OUT/settings.json`, are the run's
(gres_cli.inference.run.RunFolder); this module writes files. The folder's file names and the
record reader live in grd_tools.run_records (the dataset toolkit reads runs too) and are
re-exported here.
"""

from __future__ import annotations

import io
import json
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from PIL import Image, ImageDraw

from grd_tools.fsutil import atomic_write_bytes
from grd_tools.imageio import mask_png, mask_to_grey
from grd_tools.paths import resolve_inside
from grd_tools.run_records import RECORDS as RECORDS
from grd_tools.run_records import SETTINGS as SETTINGS
from grd_tools.run_records import read_record as read_record
from gres_cli.inference.lock import locked

RECORDS_LOCK = ".gres.records.lock"  # appends and rewrites of records.jsonl, between processes
FORMATS = ("png", "npy", "rle", "none")


def mask_stats(mask: np.ndarray) -> tuple[int, list[int] | None]:
    """(area, [x, y, w, h]) of a boolean mask; bbox None when empty."""
    area = int(np.count_nonzero(mask))
    if area == 0:
        return 0, None
    # occupied rows and columns, not every pixel's coordinates (50x faster at 12 megapixels)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    x0, y0 = int(cols[0]), int(rows[0])
    return area, [x0, y0, int(cols[-1]) - x0 + 1, int(rows[-1]) - y0 + 1]


def segment_record(
    res: Any, group: str, expression: str, margin: float
) -> tuple[dict[str, Any], np.ndarray | None]:
    """An engine result -> its JSONL record (SPEC, "Output of gres segment") and final mask."""
    rec = {"image": str(res.path), "group": group, "expression": expression}
    if res.error is not None:
        rec |= {"present": None, "d_pos": None, "d_neg": None, "margin": margin, "score": None}
        rec |= {"mask": None, "area": 0, "bbox": None, "width": None, "height": None}
        return rec | {"error": res.error}, None
    mask = res.mask if res.present else np.zeros(res.size[::-1], bool)
    area, bbox = mask_stats(mask)
    rec |= {
        "present": res.present,
        "d_pos": round(res.d_pos, 6),
        "d_neg": round(res.d_neg, 6),
        "margin": margin,
        "score": round(res.d_neg - res.d_pos, 6),
        "mask": None,
        "area": area,
        "bbox": bbox,
        "width": res.size[0],
        "height": res.size[1],
    }
    rec |= res.record_extras  # the model's own fields (a backend's score and lone call)
    return rec | {"error": None}, mask


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE (compressed counts as a string), decodable by pycocotools."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


class OutputWriter:
    """Writes images' outputs under OUT/<group>/ and appends their records, in order.

    Mask files and overlays are encoded and written by `threads` threads beside the model (zlib
    and JPEG encoding release the GIL; at phone-photo size they cost more than the model). A
    record is appended only once its files are written, so records.jsonl never lists an image
    whose outputs are missing, whenever the run stops.
    """

    def __init__(
        self,
        out: Path,
        fmt: str,
        overlay: bool,
        threads: int | None = None,
        shown_as: Path | None = None,
        records: bool = True,
    ) -> None:
        self.out, self.fmt, self.overlay = out, fmt, overlay
        # the folder records name: OUT itself, or the folder that OUT (a temporary folder
        # beside it) replaces once every output is written (`gres eval --save-predictions`)
        self.shown_as = out if shown_as is None else shown_as
        out.mkdir(parents=True, exist_ok=True)
        # records=False: files only, the records go back to the process that owns OUT (a Ray
        # actor's writer; its driver appends them)
        self._records: TextIO | None = None
        if records:
            self._records = (out / RECORDS).open("a", encoding="utf-8")
            if self._records.tell() and _last_byte(out / RECORDS) != b"\n":
                self._records.write("\n")  # end a line a killed run cut, so the next stays whole
        self.threads = threads or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="gres-writer")
        self._pending: deque[Future] = deque()
        self._queue_limit = 2 * self.threads  # images in flight: bounds the masks and photos held

    def output_path(self, group: str, name: str, suffix: str) -> Path:
        """OUT/<group>/<name><suffix>, refused (GRDError) unless it resolves inside OUT."""
        return resolve_inside(self.out, f"{group}/{name}{suffix}")

    def submit(
        self,
        record: dict[str, Any],
        name: str,
        mask: np.ndarray | None,
        photo: Image.Image | None = None,
    ) -> list[dict[str, Any]]:
        """Queue one image's outputs, named `name` (ImageGroup.output_stems) in its group's
        folder. Returns the records finished meanwhile, in order, each with its file paths and
        already appended to records.jsonl."""
        self._pending.append(self._pool.submit(self._write_files, record, name, mask, photo))
        done = []
        while self._pending and (self._pending[0].done() or len(self._pending) > self._queue_limit):
            done.append(self._append_next())
        return done

    def drain(self) -> list[dict[str, Any]]:
        """Wait for every queued image; their records, in order."""
        return [self._append_next() for _ in range(len(self._pending))]

    def close(self) -> None:
        """Finish what is queued (records of failed writes are left out) and close."""
        while self._pending:
            try:
                self._append_next()
            except Exception:  # its files are not all there: not recorded, so a re-run redoes it
                self._pending.popleft()
        self._pool.shutdown()
        if self._records is not None:
            self._records.close()

    def append(self, record: dict[str, Any]) -> None:
        """Append `record` (its files are in place) to records.jsonl; nothing with records=False."""
        if self._records is None:
            return
        # processes sharing OUT (shards) append whole lines, one at a time; a rewrite of the
        # file (--overwrite) waits for the line being appended
        with locked(self.out / RECORDS_LOCK):
            self._records.write(json.dumps(record) + "\n")
            self._records.flush()

    def _append_next(self) -> dict[str, Any]:
        record = self._pending[0].result()  # popped only once done: Ctrl-C here loses nothing
        self._pending.popleft()
        self.append(record)
        return record

    def _write_files(
        self, record: dict[str, Any], name: str, mask: np.ndarray | None, photo: Any
    ) -> dict[str, Any]:
        group = record["group"]
        if mask is not None and self.fmt in ("png", "npy") and record["present"]:
            target = self.output_path(group, name, ".npy" if self.fmt == "npy" else ".png")
            if self.fmt == "png":
                data = mask_png(mask)
            else:
                buf = io.BytesIO()
                np.save(buf, mask)
                data = buf.getvalue()
            atomic_write_bytes(target, data)
            record["mask"] = str(self._shown(target))
        if mask is not None and self.fmt == "rle" and record["present"]:
            record["rle"] = encode_rle(mask)
        if self.overlay and photo is not None and mask is not None:
            target = self.output_path(group, name, ".overlay.jpg")
            buf = io.BytesIO()
            draw_overlay(photo, mask, record).save(buf, "JPEG", quality=90)
            atomic_write_bytes(target, buf.getvalue())
            record["overlay"] = str(self._shown(target))
        return record

    def _shown(self, target: Path) -> Path:
        return self.shown_as / target.relative_to(self.out) if self.shown_as != self.out else target


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def settings_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The first setting that differs, as the option a user would type."""
    options = {
        "expression": "EXPRESSION",
        "config_sha256": "the model's config.json",
        "weights_sha256": "the model's weights (its files changed)",
        "commit": "the model's Hub commit",
        "backend_identity": "the backend the settings folder names",
        "dataset_sha256": "the dataset's grd.json",
        "layout": "the layout (--jobs: masks in a folder per expression)",
    }
    for key in list(new) + [k for k in old if k not in new]:
        if old.get(key) != new.get(key):
            label = options.get(key, f"--{key.replace('_', '-')}")
            return f"{label} {old.get(key)!r}, not {new.get(key)!r}"
    return "other settings"


def draw_overlay(photo: Image.Image, mask: np.ndarray, record: dict[str, Any]) -> Image.Image:
    """The photo with the mask tinted red and the expression and decision written on it."""
    photo = photo.convert("RGB")
    # Pillow's blend and composite stay in uint8 C loops (a float copy of a 12 MP photo is 144 MB)
    tinted = Image.blend(photo, Image.new("RGB", photo.size, (255, 40, 40)), 0.5)
    img = Image.composite(tinted, photo, Image.fromarray(mask_to_grey(mask), mode="L"))
    draw = ImageDraw.Draw(img)
    verdict = "present" if record["present"] else "absent"
    text = f"{record['expression']}: {verdict} (score {record['score']:+.2f})"
    draw.rectangle([0, 0, min(img.width, 8 + 6 * len(text)), 14], fill=(0, 0, 0))
    draw.text((3, 2), text, fill=(255, 255, 255))
    return img
