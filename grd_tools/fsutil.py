"""Atomic writes: a half-written file or folder never looks complete."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from grd_tools.errors import GRDError
from grd_tools.paths import is_within


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def refuse_overlap(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    dst_name: str = "DST",
    src_name: str = "SRC",
) -> None:
    """Raise GRDError when `dst` is `src`, lies inside it, or contains it: writing DST would
    modify the source, and replacing it would delete the source. Both are resolved first, so
    `./model/` and `model` or a symlink to it are one folder."""
    s, d = Path(src).resolve(), Path(dst).resolve()
    if is_within(d, s):
        raise GRDError(
            f"{dst}: {dst_name} may not be {src_name} {src} or lie inside it "
            f"({src_name} is never modified); pick another folder"
        )
    if is_within(s, d):
        raise GRDError(
            f"{dst}: {dst_name} contains {src_name} {src}; replacing it would delete it; "
            "pick another folder"
        )


def _old_name(dst: Path) -> str:
    return f".{dst.name}.old-"


def recover_output_dir(dst: str | os.PathLike[str]) -> None:
    """Put back the destination a crash left moved aside (`.NAME.old-PID`, where the platform
    has no atomic exchange) when `dst` itself is missing."""
    dst = Path(dst)
    if dst.exists() or dst.is_symlink() or not dst.parent.is_dir():
        return
    prefix = _old_name(dst)
    leftovers = [p for p in dst.parent.iterdir() if p.name.startswith(prefix)]
    if leftovers:
        os.replace(max(leftovers, key=lambda p: p.stat().st_mtime), dst)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE). False where the
    platform or the filesystem cannot."""
    if sys.platform != "linux":
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output_dir(dst: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `dst`; on success it replaces `dst` in one step.

    An existing `dst` is refused unless `overwrite`. On any error (or Ctrl-C) the temporary
    folder is removed and `dst` is left as it was. Killed at any moment, the old `dst` or the
    new one is in place: an existing `dst` is swapped with the new folder in one atomic
    exchange (Linux); elsewhere it is moved aside first, and the next call (or
    `recover_output_dir`) puts it back if the new one never arrived.
    """
    dst = Path(dst)
    recover_output_dir(dst)
    if dst.exists() and not overwrite:
        raise GRDError(f"{dst}: already exists (pass --overwrite to replace it)")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. a file where a folder of the path should be
        raise GRDError(f"{dst.parent}: cannot create the folder ({e.strerror})") from None
    if not os.access(dst.parent, os.W_OK):
        raise GRDError(f"{dst.parent}: not writable")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the result gets the usual mode
    try:
        yield tmp
        if not (dst.exists() or dst.is_symlink()):
            os.replace(tmp, dst)
        elif _exchange(tmp, dst):
            _remove(tmp)  # tmp now holds the old destination
        else:
            old = dst.with_name(f"{_old_name(dst)}{os.getpid()}")
            os.replace(dst, old)
            os.replace(tmp, dst)
            _remove(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> bool:
    """Hard-link `src` to `dst` when both are on one filesystem, else copy (parents created).
    True when linked, False when copied."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
        return False
    return True
