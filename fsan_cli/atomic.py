"""Atomic file writes: a temporary file beside the target, fsync, rename. A crash or Ctrl-C
never leaves a half-written file under the target's name."""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

SUFFIX = ".tmp"  # of the temporary file beside the target: .NAME.XXXXXXXX.tmp


def temp_files(path: str | Path) -> list[Path]:
    """The temporary files atomic_write leaves beside `path` when killed mid-write
    (`.NAME.XXXXXXXX.tmp`)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*{SUFFIX}"))


def atomic_write(path: str | Path, write: Callable[[IO[Any]], None], binary: bool = False) -> None:
    """Call `write(fh)` on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text))
