"""A run folder's lock: `fsan train --out DIR` and `--resume DIR` hold DIR/.lock for the whole
run, so a second training into the folder stops at once with the PID of the first.

The lock itself is fsan_cli/core/lock.py's (`fcntl.flock`, dropped by the kernel however the
process ends; the file holds the holder's PID; a stale file left by a killed run is taken over
with a warning); this module names the run folder's lock file and says who holds it.
"""

from __future__ import annotations

from pathlib import Path

from fsan_cli.core.errors import FsanError
from fsan_cli.core.lock import FileLock, acquire
from fsan_cli.core.lock import holder as _holder

LOCK_NAME = ".lock"
FolderLock = FileLock  # a held lock on a run folder; `release` frees it and removes the lock file


def lock_folder(folder: Path, what: str | None = "--out") -> FolderLock:
    """Lock an existing `folder` for this process, or a FsanError naming the process holding it."""
    return acquire(Path(folder) / LOCK_NAME, lambda pid: in_use(folder, pid, what),
                   f"Choose another {what}, or fix its permissions")


def holder(folder: Path) -> int | None:
    """The PID of another live process that holds `folder`'s lock, by the PID in its lock file
    (a quick check before any work; lock_folder is the one that counts)."""
    return _holder(Path(folder) / LOCK_NAME)


def in_use(folder: Path, pid: int | None, what: str | None = "--out") -> FsanError:
    """The error for a folder another training holds; `what` names the option to change."""
    who = f"process {pid}" if pid else "another process"
    stop = f" (`kill {pid}` stops it and keeps its last checkpoint)" if pid else ""
    other = f", or choose another {what}" if what else ""
    return FsanError(f"run folder {folder} is in use by {who}, another fsan train",
                     f"Wait for it to end{stop}{other}")
