"""Which images form which groups: a file, a folder, sub-folders (--recursive) or stdin (-)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from grd_tools.paths import is_within
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

    def output_stems(self) -> list[str]:
        """The name each image's outputs take under OUT/<group>/: its stem, or its whole file
        name where two images of the group share a stem (p.jpg and p.png), so none share one."""
        stems = Counter(p.stem.casefold() for p in self.images)
        return [p.stem if stems[p.stem.casefold()] == 1 else p.name for p in self.images]


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def folder_name(folder: Path) -> str:
    """A group's name from its folder's real path: never `.` or `..`, whatever was typed."""
    return folder.resolve().name or "root"


def _stdin_groups(lines: Iterable[str]) -> list[ImageGroup]:
    """Paths grouped by their parent FOLDER (its full path, not its name): `a/day1/1.png` and
    `b/day1/1.png` are two groups. One folder's group takes the folder's name; several are named
    by their path below the folders' common ancestor (`day1`, `a/day1` and `b/day1`...).

    Names come from the folders that hold at least one listed image: a mistyped path from a
    folder that does not exist gets an error record in a group of its own, and never renames
    the others' groups (a corrected re-run then finds every good image's answer in place)."""
    by_parent: dict[Path, list[Path]] = {}
    seen: set[Path] = set()
    for line in lines:
        if not line.strip():
            continue
        p = Path(line.strip())
        real = Path(os.path.abspath(p))  # a symlinked image stays in the folder it is listed in
        if real not in seen:  # a path listed twice is segmented once
            seen.add(real)
            by_parent.setdefault(real.parent, []).append(p)
    if not by_parent:
        raise GresError("no image paths on standard input")
    found = {k: v for k, v in by_parent.items() if any(p.is_file() for p in v)}
    lost = {k: v for k, v in by_parent.items() if k not in found}
    return _named_by_folder(found) + _named_by_folder(lost, within=by_parent)


def _named_by_folder(
    by_parent: dict[Path, list[Path]], within: dict[Path, list[Path]] | None = None
) -> list[ImageGroup]:
    """Groups of `by_parent`, one folder's named after it, several by their path below the
    common ancestor of `within`'s folders (default: their own)."""
    if not by_parent:
        return []
    if len(by_parent) == 1 and within is None:
        ((parent, images),) = by_parent.items()
        return [ImageGroup(parent.name or "root", images)]
    common = Path(os.path.commonpath([str(p) for p in within or by_parent]))
    top = common.name or "root"
    return [
        ImageGroup((Path(top) / parent.relative_to(common)).as_posix(), images)
        for parent, images in by_parent.items()
    ]


def discover(
    path: str, recursive: bool = False, stdin_lines: Iterable[str] | None = None
) -> list[ImageGroup]:
    """Groups to segment. `-` reads paths from `stdin_lines` (grouped by parent folder).

    Group names are relative paths (no `.` or `..` part) and no two images map to one output
    name; anything else is a GresError before any work."""
    if path == "-":
        return unique_outputs(_stdin_groups(stdin_lines or []))
    root = Path(path)
    if not root.exists():
        raise GresError(f"{root}: no such file or folder")
    if root.is_file():
        return [ImageGroup(folder_name(root.parent), [root])]
    groups = []
    top = _images_in(root)
    if top:
        groups.append(ImageGroup(folder_name(root), top))
    if recursive:
        for sub in sorted(p for p in root.rglob("*") if p.is_dir() and not p.name.startswith(".")):
            imgs = _images_in(sub)
            if imgs:
                groups.append(ImageGroup(sub.relative_to(root).as_posix(), imgs))
    if not groups:
        hint = "" if recursive else " (sub-folders are groups with --recursive)"
        raise GresError(f"{root}: no images found{hint}")
    return unique_outputs(groups)


def unique_outputs(groups: list[ImageGroup]) -> list[ImageGroup]:
    """Refuse, in one line, two groups of one name or two images of one output name (a name
    that differs only in case is the same file on macOS and Windows)."""
    names = Counter(g.name.casefold() for g in groups)
    clash = next((g.name for g in groups if names[g.name.casefold()] > 1), None)
    if clash is not None:
        raise GresError(f"two groups are named {clash!r}; their outputs would share OUT/{clash}/")
    for g in groups:
        stems = Counter(s.casefold() for s in g.output_stems())
        for image, stem in zip(g.images, g.output_stems(), strict=True):
            if stems[stem.casefold()] > 1:
                raise GresError(
                    f"{image}: another image of group {g.name!r} has the same output name "
                    f"{stem!r}; rename one of them"
                )
    return groups


def check_out(out: Path, path: str, groups: list[ImageGroup]) -> None:
    """Refuse an --out that is, holds or lies inside an input folder, or that holds an input
    image: gres never writes over an input (a GresError before any work)."""
    target = out.resolve()
    if path != "-" and Path(path).is_dir():
        folder = Path(path).resolve()
        if is_within(target, folder):
            raise GresError(f"--out {out}: lies inside the input folder {path}; pick another")
    for g in groups:
        for image in g.images:
            if target in image.resolve().parents:
                raise GresError(
                    f"--out {out}: holds the input {image}; pick an --out outside the inputs"
                )


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
