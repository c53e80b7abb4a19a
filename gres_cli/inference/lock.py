"""One owner at a time for an output folder (`OUT/.gres.lock`).

A run holds the lock for as long as it writes into OUT; the operating system drops it when the
process ends, however it ends (kill -9 included), so a lock is never left stale. Processes that
share one OUT by design (`--shard i/P`, `torchrun` ranks) hold it shared, each with an exclusive
lock of its own share; everything else is refused in one line naming the pid that holds OUT:

| OUT held by                | a run          | shard j/P        | shard j/Q (Q != P) |
|----------------------------|----------------|------------------|--------------------|
| a run (no shards)          | refused        | refused          | refused            |
| shard i/P                  | refused        | runs (i != j)    | refused            |

POSIX `flock`; where there is none (Windows) processes sharing one OUT are not coordinated.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from gres_cli.errors import GresError

OWNER = ".gres.lock"
SHARDS = ".gres.shards"  # how many shares the processes holding OUT split the work into
# a sharded process that finds OUT held exclusively waits this long before it is refused: the
# first of several ranks started together holds it exclusively while it writes SHARDS
JOIN_WAIT_S = 10.0


class OutputLock:
    """The lock of OUT for one process; `acquire` refuses (GresError) when OUT has an owner this
    process cannot share it with; `release` (or the end of the process) lets it go."""

    def __init__(self, out: Path, shard: tuple[int, int] = (0, 1)) -> None:
        self.out = Path(out)
        self.shard = shard
        self._files: list[IO[str]] = []

    def acquire(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # no flock: nothing to coordinate with
            return self
        owner = self._open(OWNER)
        index, shares = self.shard
        if shares == 1:
            if not _try(owner, fcntl.LOCK_EX):
                self.release()
                raise GresError(f"--out {self.out}: {self._holders()}")
            _note(owner, f"pid {os.getpid()}")
            return self
        deadline = time.monotonic() + JOIN_WAIT_S
        while True:
            if _try(owner, fcntl.LOCK_EX):  # the first of the shares: it says how many there are
                _note(owner, "")  # the pids are in the shares' own locks
                (self.out / SHARDS).write_text(f"{shares}\n", "utf-8")
                if _try(owner, fcntl.LOCK_SH):  # not atomic: a run may take OUT in between
                    break
            elif _try(owner, fcntl.LOCK_SH):
                break
            if time.monotonic() > deadline:
                self.release()
                raise GresError(f"--out {self.out}: {self._holders()}")
            time.sleep(0.05)
        joined = _read(self.out / SHARDS)
        if joined != str(shares):
            self.release()
            raise GresError(
                f"--out {self.out}: processes with --shard i/{joined} are writing into it, not "
                f"i/{shares}; wait for them to end, or pick another --out"
            )
        own = self._open(f".gres.shard-{index}.lock")
        if not _try(own, fcntl.LOCK_EX):
            holder = _read(self.out / f".gres.shard-{index}.lock") or "another process"
            self.release()
            raise GresError(
                f"--out {self.out}: share {index}/{shares} is already being written by "
                f"{holder}; wait for it to end, or pick another --out"
            )
        _note(own, f"pid {os.getpid()}")
        return self

    def release(self) -> None:
        for f in self._files:
            f.close()  # closing the file drops its flock
        self._files = []

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _open(self, name: str) -> IO[str]:
        f = (self.out / name).open("a+", encoding="utf-8")
        self._files.append(f)
        return f

    def _holders(self) -> str:
        """Who holds OUT, as the end of a refusal."""
        owner = _read(self.out / OWNER)
        who = f"another gres run ({owner})" if owner else "another gres run"
        pids = [_read(p) for p in sorted(self.out.glob(".gres.shard-*.lock")) if _held(p)]
        if pids and not owner:
            who = f"the processes of a sharded run ({', '.join(p for p in pids if p)})"
        return f"{who} is writing into it; wait for it to end, or pick another --out"


def _try(f: IO[str], mode: int) -> bool:
    import fcntl

    try:
        fcntl.flock(f, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _held(path: Path) -> bool:
    """Whether another process holds the lock file `path` now."""
    import fcntl

    with path.open("a") as f:
        return not _try(f, fcntl.LOCK_EX)  # taken for an instant, dropped at close


def _note(f: IO[str], text: str) -> None:
    """Who holds the lock, for the refusals of others (read only while the lock is held)."""
    f.seek(0)
    f.truncate()
    f.write(text)
    f.flush()


def _read(path: Path) -> str:
    try:
        return path.read_text("utf-8").strip()
    except OSError:
        return ""


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """A short exclusive section between processes (POSIX flock; none where there is none)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
