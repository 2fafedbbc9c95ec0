"""A run folder's lock: `fsan train --out DIR` and `--resume DIR` hold DIR/.lock for the whole
run, so a second training into the folder stops at once with the PID of the first.

The lock is `fcntl.flock` on the file, which the kernel drops when the process ends, however it
ends; the file holds the PID of its holder and is removed when the run ends normally. A file
that is still there but no longer locked was left by a killed run: it is taken over with a
warning.
"""

from __future__ import annotations

import os
from pathlib import Path

from fsan_cli.core.errors import FsanError
from fsan_cli.core.output import warn

try:
    import fcntl
except ImportError:  # Windows: no flock; training runs without a lock there
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


class FolderLock:
    """A held lock on `folder`; `release` frees it and removes the lock file."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)
            if _same_inode(fd, self.path):
                self.path.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)  # unlocks


def lock_folder(folder: Path, what: str | None = "--out") -> FolderLock:
    """Lock an existing `folder` for this process, or a FsanError naming the process holding it."""
    path = Path(folder) / LOCK_NAME
    if fcntl is None:
        return FolderLock(path, None)
    for _ in range(5):  # the holder may remove the file between our open and our lock: retry
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise FsanError(f"cannot create the lock file {path} ({exc.strerror or exc})",
                            f"Choose another {what}, or fix its permissions") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = _read_pid(fd)
            os.close(fd)
            raise in_use(folder, pid, what) from None
        if not _same_inode(fd, path):
            os.close(fd)
            continue
        previous = _read_pid(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        if previous and previous != os.getpid():
            warn(f"{path} was left by process {previous}, which ended without removing it "
                 "(killed?); taking the lock over")
        return FolderLock(path, fd)
    raise in_use(folder, None, what)


def holder(folder: Path) -> int | None:
    """The PID of another live process that holds `folder`'s lock, by the PID in its lock file
    (a quick check before any work; lock_folder is the one that counts)."""
    try:
        text = (Path(folder) / LOCK_NAME).read_text(encoding="ascii").strip()
        pid = int(text)
    except (OSError, ValueError):
        return None
    if pid == os.getpid() or not _alive(pid):
        return None
    return pid


def in_use(folder: Path, pid: int | None, what: str | None = "--out") -> FsanError:
    """The error for a folder another training holds; `what` names the option to change."""
    who = f"process {pid}" if pid else "another process"
    stop = f" (`kill {pid}` stops it and keeps its last checkpoint)" if pid else ""
    other = f", or choose another {what}" if what else ""
    return FsanError(f"run folder {folder} is in use by {who}, another fsan train",
                     f"Wait for it to end{stop}{other}")


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode("ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _same_inode(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True
