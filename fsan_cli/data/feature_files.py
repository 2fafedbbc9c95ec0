"""HDF5 feature files: where a video's (T, D) matrix sits in each benchmark's layout, a scan of
a file for the videos asked, and streaming reads of their rows (a reader thread ahead of the
consumer). What is done with the rows (PCA, pooling to N_v) is in data/features.py."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from fsan_cli.core.errors import FsanError


@dataclass
class FeatureLayout:
    """Where a video's (T, D) matrix sits in an HDF5 file.

    `member`: the dataset inside a per-video group (ActivityNet: "c3d_features"); None when the
    video's key is itself the dataset. `aliases(video)` gives the keys to try, best first.
    """

    description: str
    member: str | None = None
    aliases: Callable[[str], list[str]] = field(default=lambda video: [video])


@dataclass
class Located:
    video: str
    path: str  # the dataset's path in the file
    rows: int
    dim: int
    offset: int | None  # byte offset of contiguous raw storage; None: read through HDF5
    dtype: np.dtype


@dataclass
class Scan:
    found: dict[str, Located]
    missing: list[str]  # no key in the file
    empty: list[str]  # present with zero rows


def _describe(obj) -> str:
    if isinstance(obj, h5py.Dataset):
        return f"a dataset of shape {obj.shape}"
    members = list(obj.keys())
    shown = ", ".join(members[:5]) + (", ..." if len(members) > 5 else "")
    return f"a group with members [{shown}]"


def video_keys(video: str) -> list[str]:
    """The keys a video may have in a feature file, best first: its id, ActivityNet's id with or
    without `v_`, DiDeMo's file name without its extension."""
    names = [video, video[2:] if video.startswith("v_") else f"v_{video}"]
    if "." in video:
        names.append(video.rsplit(".", 1)[0])
    return names


def feature_matrix(obj, where: str, expected: str, fix: str, members: Sequence[str] = ()) -> h5py.Dataset:
    """The (T, D) numeric dataset that `obj` (an HDF5 dataset or group) is, or holds: a group's
    first of `members` present, else its only dataset. Anything else is an error naming what was
    found at its path in `where` (the file), the `expected` layout and the `fix`."""
    if isinstance(obj, h5py.Group):
        inner = [obj[m] for m in members if isinstance(obj.get(m), h5py.Dataset)][:1]
        inner = inner or [v for v in obj.values() if isinstance(v, h5py.Dataset)]
        if len(inner) != 1:
            raise FsanError(f"unexpected layout in {where}: expected {expected}; found at '{obj.name}' "
                            f"{_describe(obj)}", fix)
        obj = inner[0]
    if len(obj.shape) != 2 or obj.dtype.kind not in "fiu":
        raise FsanError(f"unexpected layout in {where}: expected {expected}; '{obj.name}' holds {obj.dtype} "
                        f"values of shape {obj.shape}, not a (T, D) matrix of clip features", fix)
    return obj


def _fast_locate(h5, video: str, layout: FeatureLayout) -> Located | None:
    """The expected layout through the low-level API (about 5x faster than h5py's objects)."""
    key = layout.aliases(video)[0]
    path = f"{key}/{layout.member}" if layout.member else key
    try:
        dsid = h5py.h5d.open(h5.id, path.encode())
    except (KeyError, ValueError):
        return None
    shape, dtype = dsid.shape, dsid.dtype
    if len(shape) != 2 or dtype.kind not in "fiu":
        return None
    plist = dsid.get_create_plist()
    raw = plist.get_layout() == h5py.h5d.CONTIGUOUS and plist.get_nfilters() == 0
    offset = dsid.get_offset() if raw else None
    return Located(video, "/" + path, int(shape[0]), int(shape[1]), offset, dtype)


def _locate(h5, video: str, layout: FeatureLayout) -> Located | None:
    fast = _fast_locate(h5, video, layout)
    if fast is not None:
        return fast
    for key in layout.aliases(video):
        obj = h5.get(key)
        if obj is None:
            continue
        obj = feature_matrix(obj, h5.filename, layout.description,
                             "Pass a file with one (T, D) matrix per video (see docs/datasets.md)",
                             [layout.member] if layout.member else ())
        plist = obj.id.get_create_plist()
        raw = plist.get_layout() == h5py.h5d.CONTIGUOUS and plist.get_nfilters() == 0
        offset = obj.id.get_offset() if raw else None
        return Located(video, obj.name, int(obj.shape[0]), int(obj.shape[1]), offset, obj.dtype)
    return None


def open_h5(path: Path):
    path = Path(path)
    if not path.is_file():
        raise FsanError(f"feature file {path} does not exist", "Pass --features with an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise FsanError(
            f"{path} is not a readable HDF5 file ({exc})",
            "Pass --features with an HDF5 (.h5/.hdf5) file",
        ) from exc


def scan_features(path: Path, videos: Sequence[str], layout: FeatureLayout) -> Scan:
    """Find every video's matrix without reading it; layout and dimension errors come here,
    before any long read."""
    found: dict[str, Located] = {}
    missing: list[str] = []
    empty: list[str] = []
    with open_h5(path) as h5:
        for video in videos:
            loc = _locate(h5, video, layout)
            if loc is None:
                missing.append(video)
            elif loc.rows == 0:
                empty.append(video)
            else:
                found[video] = loc
        if videos and not found:
            keys = list(h5.keys())[:3]
            raise FsanError(
                f"none of the {len(videos)} annotated videos is in {path}: expected "
                f"{layout.description}, keyed like '{videos[0]}'; found keys like {keys}",
                "Check that --features matches --dataset and --annotations",
            )
    dims: dict[int, str] = {}
    for loc in found.values():
        dims.setdefault(loc.dim, loc.video)
    if len(dims) > 1:
        shown = "; ".join(f"D={d} (e.g. {v})" for d, v in list(dims.items())[:3])
        raise FsanError(
            f"inconsistent feature dimensions in {path}: {shown}",
            "Every video needs features from the same extractor; regenerate the file",
        )
    return Scan(found, missing, empty)


def _read_raw(fh, loc: Located) -> np.ndarray:
    out = np.empty((loc.rows, loc.dim), loc.dtype)
    view = memoryview(out).cast("B")
    fh.seek(loc.offset)
    done = 0
    while done < len(view):
        n = fh.readinto(view[done:])
        if not n:
            raise FsanError(
                f"the feature file ends inside video {loc.video}", "The file is truncated"
            )
        done += n
    return out


def read_features(
    path: Path, locs: Sequence[Located], prefetch: int = 16
) -> Iterator[tuple[Located, np.ndarray]]:
    """Yield (location, rows) for `locs` in file order, read by a background thread.

    Contiguous uncompressed datasets are read straight from their byte offset (one sequential
    pass over the file, no HDF5 overhead); chunked or compressed ones through h5py.
    """
    ordered = sorted(locs, key=lambda loc: (loc.offset is None, loc.offset or 0, loc.path))
    out: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def produce() -> None:
        h5 = None
        try:
            with open(path, "rb", buffering=0) as fh:
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
                for loc in ordered:
                    if stop.is_set():
                        return
                    if loc.offset is not None:
                        rows = _read_raw(fh, loc)
                    else:
                        if h5 is None:
                            h5 = open_h5(path)
                        rows = h5[loc.path][()]
                    out.put((loc, rows))
            out.put(None)
        except BaseException as exc:  # handed to the consumer, raised there
            out.put(exc)
        finally:
            if h5 is not None:
                h5.close()

    thread = threading.Thread(target=produce, name="fsan-feature-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                out.get_nowait()
            except queue.Empty:
                thread.join(0.05)
