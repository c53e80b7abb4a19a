"""Which images form which groups: a file, a folder, sub-folders (--recursive) or stdin (-)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gres_cli.errors import GresError

IMAGE_SUFFIXES = {
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".jfif",
}


@dataclass
class ImageGroup:
    """Images segmented together: the group-wise step compares them with one another."""

    name: str
    images: list[Path]


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def discover(
    path: str, recursive: bool = False, stdin_lines: Iterable[str] | None = None
) -> list[ImageGroup]:
    """Groups to segment. `-` reads paths from `stdin_lines` (grouped by parent folder)."""
    if path == "-":
        lines = [ln.strip() for ln in (stdin_lines or []) if ln.strip()]
        by_parent: dict[str, list[Path]] = {}
        for ln in lines:
            p = Path(ln)
            by_parent.setdefault(p.parent.name or ".", []).append(p)
        groups = [ImageGroup(name, imgs) for name, imgs in by_parent.items()]
        if not groups:
            raise GresError("no image paths on standard input")
        return groups
    root = Path(path)
    if not root.exists():
        raise GresError(f"{root}: no such file or folder")
    if root.is_file():
        return [ImageGroup(root.parent.name or ".", [root])]
    groups = []
    top = _images_in(root)
    if top:
        groups.append(ImageGroup(root.name or ".", top))
    if recursive:
        for sub in sorted(p for p in root.rglob("*") if p.is_dir() and not p.name.startswith(".")):
            imgs = _images_in(sub)
            if imgs:
                groups.append(ImageGroup(sub.relative_to(root).as_posix(), imgs))
    if not groups:
        hint = "" if recursive else " (sub-folders are groups with --recursive)"
        raise GresError(f"{root}: no images found{hint}")
    return groups


def parse_shard(shard: str | None) -> tuple[int, int]:
    """'i/P' -> (i, P). None -> this process's share under torchrun ($RANK/$WORLD_SIZE), else
    (0, 1): every process of `torchrun --nproc-per-node P -m gres_cli segment ...` takes a
    disjoint share of the groups, and all write into the same --out."""
    if shard is None:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world > 1:
            return int(os.environ.get("RANK", "0")), world
        return 0, 1
    try:
        i, p = (int(x) for x in shard.split("/"))
    except ValueError:
        raise GresError(f"--shard {shard!r}: expected i/P, e.g. 0/4") from None
    if not 0 <= i < p:
        raise GresError(f"--shard {shard!r}: need 0 <= i < P")
    return i, p
