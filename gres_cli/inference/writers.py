"""Outputs of `gres segment`: mask files, overlays and JSONL records, written atomically.

`OUT/records.jsonl` lists every finished image (one JSON record per line, flushed as images
finish); a re-run reads it and skips those images unless --overwrite, so an interrupted run
resumes where it stopped.
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

RECORDS = "records.jsonl"
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

    def __init__(self, out: Path, fmt: str, overlay: bool, threads: int | None = None) -> None:
        self.out, self.fmt, self.overlay = out, fmt, overlay
        out.mkdir(parents=True, exist_ok=True)
        self._records: TextIO = (out / RECORDS).open("a", encoding="utf-8")
        self.threads = threads or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="gres-writer")
        self._pending: deque[Future] = deque()
        self._queue_limit = 2 * self.threads  # images in flight: bounds the masks and photos held

    def finished(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Records of images already done, keyed by (image, expression)."""
        done = {}
        path = self.out / RECORDS
        for line in path.read_text("utf-8").splitlines() if path.exists() else []:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash: that image is redone
                continue
            if rec.get("error") is None:
                done[(rec["image"], rec["expression"])] = rec
        return done

    def mask_path(self, group: str, image: Path) -> Path:
        suffix = ".npy" if self.fmt == "npy" else ".png"
        return self.out / group / f"{image.stem}{suffix}"

    def submit(
        self,
        record: dict[str, Any],
        image: Path,
        mask: np.ndarray | None,
        photo: Image.Image | None = None,
    ) -> list[dict[str, Any]]:
        """Queue one image's outputs. Returns the records finished meanwhile, in order, each
        with its file paths and already appended to records.jsonl."""
        self._pending.append(self._pool.submit(self._write_files, record, image, mask, photo))
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
        self._records.close()

    def _append_next(self) -> dict[str, Any]:
        record = self._pending[0].result()  # popped only once done: Ctrl-C here loses nothing
        self._pending.popleft()
        self._records.write(json.dumps(record) + "\n")
        self._records.flush()
        return record

    def _write_files(
        self, record: dict[str, Any], image: Path, mask: np.ndarray | None, photo: Any
    ) -> dict[str, Any]:
        group = record["group"]
        if mask is not None and self.fmt in ("png", "npy") and record["present"]:
            target = self.mask_path(group, image)
            if self.fmt == "png":
                data = mask_png(mask)
            else:
                buf = io.BytesIO()
                np.save(buf, mask)
                data = buf.getvalue()
            atomic_write_bytes(target, data)
            record["mask"] = str(target)
        if mask is not None and self.fmt == "rle" and record["present"]:
            record["rle"] = encode_rle(mask)
        if self.overlay and photo is not None and mask is not None:
            target = self.out / group / f"{image.stem}.overlay.jpg"
            buf = io.BytesIO()
            draw_overlay(photo, mask, record).save(buf, "JPEG", quality=90)
            atomic_write_bytes(target, buf.getvalue())
            record["overlay"] = str(target)
        return record


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
