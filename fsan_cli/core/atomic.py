"""Atomic file writes: a temporary file beside the target, fsync, rename. A crash or Ctrl-C
never leaves a half-written file under the target's name; a write that fails on a full disk, in
whatever form numpy or torch reports it, is an OSError(ENOSPC) naming the target
(errors.out_of_space), which errors.write_problem and handle_errors explain."""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from fsan_cli.core.errors import FsanError, out_of_space, write_error

SUFFIX = ".tmp"  # of the temporary file beside the target: .NAME.XXXXXXXX.tmp


def temp_files(path: str | Path) -> list[Path]:
    """The temporary files atomic_write leaves beside `path` when killed mid-write
    (`.NAME.XXXXXXXX.tmp`)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*{SUFFIX}"))


def check_folder_of(path: str | Path, what: str) -> None:
    """Before any work: the folder of the output file `path` (given as `what`, e.g. "--out")
    exists or can be made, i.e. the nearest existing path above it is a folder."""
    path = Path(path)
    for above in path.parents:
        if above.is_dir():
            return
        if above.exists() or above.is_symlink():
            raise FsanError(f"cannot make the folder of {what} {path}: {above} is not a folder",
                            f"Fix the path of {what}")


def make_folder_of(path: str | Path, what: str) -> None:
    """Create the missing folders above the output file `path` (as `mkdir -p`), so that
    `--out data/x.h5` works where `data/` does not exist yet; FsanError where they cannot be made."""
    check_folder_of(path, what)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, Path(path).parent, f"pass another {what}") or exc from None


def atomic_write(path: str | Path, write: Callable[[IO[Any]], None], binary: bool = False) -> None:
    """Call `write(fh)` on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=SUFFIX, dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would make it, not mkstemp's 0600
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        exc = out_of_space(exc, path.parent, path)  # while the half-written file still takes its space
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _naming(exc: OSError, path: Path) -> OSError:
    """The error with the target as its file name (not the temporary file's, nor none), so
    messages name the file the user asked for."""
    if exc.errno is None or exc.filename == str(path):
        return exc
    return OSError(exc.errno, exc.strerror, str(path))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text))
