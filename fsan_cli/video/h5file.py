"""The HDF5 files `fsan extract` and `fsan ground VIDEO` write: one float32 (T, D) dataset per
video (its attributes: duration, fps, the extractor's record), the file marked PER_VIDEO so that a
video named `features` is not read as the one-video layout; written whole and atomically; and
what a truncated video looks like."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fsan_cli.core.atomic import SUFFIX, _umask
from fsan_cli.core.errors import write_error

LAYOUT_ATTR = "fsan_layout"  # a file attribute: how to read the file's datasets
PER_VIDEO = "one dataset per video"  # extract's files: a dataset named `features` is a video too
POOLED = "pooled_clips"  # a dataset attribute (fsan export): its rows are the whole video pooled to this many clips


def write_h5(
    path: Path, videos: dict[str, tuple[np.ndarray, dict[str, Any]]], copy_from: Sequence[Path] = (),
    elsewhere: str = "pass another --out", root: dict[str, Any] | None = None,
) -> None:
    """Write `videos` ({id: (rows, attrs)}) and every dataset of the files `copy_from` into a
    temporary file beside `path`, fsync, rename over it; the file is marked PER_VIDEO, with the
    attributes `root` too.

    HDF5 writes through a Python file object: a full disk or a read-only one is an OSError
    raised here (h5py's own file driver turns it into a RuntimeError while closing, and
    then crashes the interpreter). Such an error removes the temporary file and is one FsanError
    with `elsewhere` as the other way out."""

    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=SUFFIX, dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would make it, not mkstemp's 0600
        with os.fdopen(fd, "w+b") as fh:
            with h5py.File(fh, "w") as dst:
                dst.attrs[LAYOUT_ATTR] = PER_VIDEO
                for k, v in (root or {}).items():
                    dst.attrs[k] = v
                for source in copy_from:
                    with h5py.File(source, "r") as src:
                        for key in src:
                            if key not in dst:
                                src.copy(src[key], dst, name=key)
                for video, (rows, attrs) in videos.items():
                    ds = dst.create_dataset(video, data=rows.astype(np.float32))
                    for k, v in attrs.items():
                        ds.attrs[k] = v
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        error = write_error(os_error(exc), path, elsewhere)
        if error is not None:
            raise error from None
        raise


def os_error(exc: BaseException) -> BaseException:
    """An HDF5 error that carries a write's errno (`... errno = 28, error message = ...`) as the
    OSError it was; any other exception as it is."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc
    if isinstance(exc, OSError | RuntimeError):
        found = re.search(r"errno = (\d+)", str(exc))
        if found:
            code = int(found.group(1))
            return OSError(code, os.strerror(code))
    return exc



TRUNCATED = (1.0, 0.05)  # seconds, share: a container's length past the decoded frames' to warn of


def truncation(decoded: float, container: float | None) -> str | None:
    """Why a video looks truncated (the container's duration well past its decoded frames')."""
    if container is None or not np.isfinite(container):
        return None
    if container - decoded > max(TRUNCATED[0], TRUNCATED[1] * container):
        return f"its container says {container:g} s, and its frames decode for {decoded:g} s"
    return None
