"""A lock on a file path held by one process: `fcntl.flock` on the lock file, which the kernel
drops when the process ends, however it ends. The file holds the PID of its holder and is
removed when the holder releases it normally; a file still there but no longer locked was left
by a killed process and is taken over with a warning.

Used by `fsan train` for its run folder (fsan_cli/train/lock.py) and by `fsan extract` for its
output file (fsan_cli/video/extract.py).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from fsan_cli.core.errors import FsanError
from fsan_cli.core.output import warn

try:
    import fcntl
except ImportError:  # Windows: no flock; commands run without a lock there
    fcntl = None  # type: ignore[assignment]


class FileLock:
    """A held lock on `path`; `release` frees it and removes the lock file."""

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

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(path: Path, busy: Callable[[int | None], FsanError], fix: str) -> FileLock:
    """Lock the file `path` (made if missing) for this process; `busy(pid)` is the error when
    another process holds it (pid None where unknown), `fix` the advice when it cannot be made."""
    path = Path(path)
    if fcntl is None:
        return FileLock(path, None)
    for _ in range(5):  # the holder may remove the file between our open and our lock: retry
        try:  # never through a link: a planted `.lock -> FILE` would have FILE truncated
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if path.is_symlink():
                raise FsanError(f"the lock file {path} is a link, which fsan does not follow",
                                f"Remove the link (rm {path}) and run again") from None
            raise FsanError(f"cannot create the lock file {path} ({exc.strerror or exc})", fix) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FsanError(f"the lock file {path} is not a regular file (a FIFO, socket or device)",
                            f"Remove it (rm {path}) and run again")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = _read_pid(fd)
            os.close(fd)
            raise busy(pid) from None
        if not _same_inode(fd, path):
            os.close(fd)
            continue
        previous = _read_pid(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        if previous and previous != os.getpid():
            warn(f"{path} was left by process {previous}, which ended without removing it "
                 "(killed?); taking the lock over")
        return FileLock(path, fd)
    raise busy(None)


def holder(path: Path) -> int | None:
    """The PID of another process that holds the lock file `path` (a quick check before any
    work; acquire is the one that counts): the file is probed with flock, so a PID left in it by
    a killed process, or reused since by another program, is not taken for a holder."""
    path = Path(path)
    try:  # a link or a FIFO is no lock of fsan's (acquire refuses it): never followed or read
        if path.is_symlink() or not path.is_file() or fcntl is None:
            return None
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:  # held: by the process the file names
            pid = _read_pid(fd)
            return pid if pid is not None and pid != os.getpid() and _alive(pid) else None
        fcntl.flock(fd, fcntl.LOCK_UN)  # nobody holds it: whatever PID it names is gone
        return None
    finally:
        os.close(fd)


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
