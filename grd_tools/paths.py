"""Resolve paths read from a dataset, refusing any that would leave the dataset root."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from grd_tools.errors import UnsafePathError


def check_relative(rel: str) -> PurePosixPath:
    """Check the *text* of a dataset path: relative, POSIX separators, no `..` parts.

    Raises UnsafePathError naming the path when it is absolute or climbs out.
    """
    if not rel or "\\" in rel or "\x00" in rel:
        raise UnsafePathError(f"{rel!r}: not a relative POSIX path")
    p = PurePosixPath(rel)
    if p.is_absolute() or (len(rel) > 1 and rel[1] == ":"):
        raise UnsafePathError(f"{rel!r}: absolute path (paths must be relative to the dataset)")
    if ".." in p.parts:
        raise UnsafePathError(f"{rel!r}: '..' leaves the dataset root")
    return p


def resolve_inside(root: str | os.PathLike[str], rel: str) -> Path:
    """Return `root / rel` after checking that it stays inside `root`, symlinks included.

    The check runs on the text (absolute paths, `..`) and on the resolved path (a symlink inside
    the dataset that points out of it). The file need not exist.
    """
    check_relative(rel)
    root_real = Path(root).resolve()
    full = Path(root) / rel
    real = full.resolve()
    if real != root_real and root_real not in real.parents:
        raise UnsafePathError(f"{rel!r}: resolves to {real}, outside the dataset root {root_real}")
    return full
