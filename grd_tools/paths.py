"""Resolve paths read from a dataset, refusing any that would leave the dataset root."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from grd_tools.errors import UnsafePathError


def check_relative(rel: str) -> PurePosixPath:
    """Check the *text* of a dataset path: relative, POSIX separators, no `..` parts.

    Raises UnsafePathError naming the path when it is absolute or climbs out.
    """
    _check_text(rel)
    return PurePosixPath(rel)


def _check_text(rel: str) -> None:
    # string tests, not PurePosixPath: they run once per file of a dataset at every start-up
    if not rel or "\\" in rel or "\x00" in rel:
        raise UnsafePathError(f"{rel!r}: not a relative POSIX path")
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise UnsafePathError(f"{rel!r}: absolute path (paths must be relative to the dataset)")
    if ".." in rel.split("/"):
        raise UnsafePathError(f"{rel!r}: '..' leaves the dataset root")


def resolve_inside(root: str | os.PathLike[str], rel: str, *, root_real: str | None = None) -> Path:
    """Return `root / rel` after checking that it stays inside `root`, symlinks included.

    The check runs on the text (absolute paths, `..`) and on the resolved path (a symlink inside
    the dataset that points out of it). The file need not exist. A caller resolving many paths
    of one root passes `root_real=os.path.realpath(root)` to resolve the root once.
    """
    _check_text(rel)
    root_real = root_real or os.path.realpath(root)
    real = os.path.realpath(os.path.join(root, rel))
    if real != root_real and not real.startswith(os.path.join(root_real, "")):
        raise UnsafePathError(f"{rel!r}: resolves to {real}, outside the dataset root {root_real}")
    return Path(root) / rel


def is_within(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """True when `path` is `folder` or lies inside it, compared as given (resolve both first to
    compare where they really are)."""
    path, folder = Path(path), Path(folder)
    return path == folder or folder in path.parents
