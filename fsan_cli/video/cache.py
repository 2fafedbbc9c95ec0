"""`fsan ground VIDEO`'s feature cache: the features of a video file as a checkpoint's extractor
gives them, in $XDG_CACHE_HOME/fsan/features (fsan_cli/video/record.py names the entries).

An entry is an input like any other: before it is used, it is checked against the video it came
from (its size; the entry is named by the sha256 of the video's bytes, which subsumes size and
modification time, and by its name) and against the checkpoint's extractor record, and its rows
and duration against the sha256 stored when it was written. A bad entry (damaged, truncated, not
HDF5, edited, NaN rows, other rows) is removed with a warning and extracted again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fsan_cli.core import checkpoint
from fsan_cli.core.errors import FsanError
from fsan_cli.core.output import log, warn
from fsan_cli.video import encode
from fsan_cli.video import record as extractor
from fsan_cli.video.encode import load_encoder, require_extra
from fsan_cli.video.h5file import truncation, write_h5


def features_for_ground(video: Path, ckpt_path: Path, weights: Path | None, device: Any) -> Path:
    """The HDF5 features of `video` as the checkpoint's extractor gives them: from the cache
    (extractor.cache_dir; an entry is checked by `_valid_entry` before it is used, and a bad one
    is extracted again) or extracted into it now. A checkpoint of other features is refused."""

    ckpt = checkpoint.load(ckpt_path)
    record = extractor.check(ckpt.get("extractor"), f"the checkpoint {ckpt_path}")
    if record is None:
        data = ckpt["data"]
        raise FsanError(
            f"the checkpoint {ckpt_path} was trained on {extractor.describe(None)}, "
            f"{data['feature_dim']}-d, of dataset '{data.get('dataset')}', and {video} is a video "
            "file, which fsan turns into CLIP image features",
            "Ground the video with a checkpoint trained on `fsan extract` features (README, "
            "'Your own video'), or pass the video's features in the checkpoint's format (.h5)",
        )
    require_extra(f"Grounding the video file {video}")
    try:
        cached = extractor.cache_path(video, record)
    except OSError as exc:
        raise FsanError(f"video file {video} cannot be read ({exc.strerror or exc})",
                        "Pass a video file that can be read") from None
    if _from_cache(cached, video, record):
        log(f"Features of {video}: {cached} (cached)")
        return cached
    model = str(record["model"])
    if weights is None and extractor.is_local(model) and not Path(model).is_dir():
        raise FsanError(
            f"the checkpoint {ckpt_path} was trained on features of the CLIP weights in the folder "
            f"{model}, which no longer exists",
            "Pass --weights DIR with that folder where it is now (or a copy of it)",
        )
    encoder = load_encoder(model, weights, device, float(record["fps"]))
    if not extractor.same(encoder.record, record):
        raise FsanError(
            f"the checkpoint {ckpt_path} was trained on {extractor.describe(record)}, and "
            f"{weights if weights is not None else model} gives {extractor.describe(encoder.record)}",
            f"Pass --weights with the folder of the checkpoint's weights ({model})",
        )
    details: dict[str, Any] = {}
    rows, seconds = encode.extract_video(video, encoder, details=details)
    why = truncation(seconds, details.get("container_duration"))
    if why:
        warn(f"{video} looks truncated: {why}; its features cover the {seconds:g} s that decode")
    _cache(cached, video, record, rows, seconds)
    log(f"Features of {video}: {rows.shape[0]} frames at {record['fps']:g}/s, cached in {cached}")
    return cached


CACHE_FIX = "set XDG_CACHE_HOME to a folder on a disk that can be written"


def _cache(path: Path, video: Path, record: dict[str, Any], rows: np.ndarray, seconds: float) -> None:
    """Write a cache entry: the rows of `video` under its name, with the record, the duration,
    the source's size and modification time, and the sha256 of what was stored (`_entry_sum`)."""
    rows = np.ascontiguousarray(rows, np.float32)
    stat = video.stat()
    root = {"source_size": int(stat.st_size), "source_mtime_ns": int(stat.st_mtime_ns),
            "entry_sha256": _entry_sum(rows, seconds, record)}
    attrs = {**extractor.to_attrs(record), "duration": float(seconds)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_h5(path, {video.stem: (rows, attrs)}, elsewhere=CACHE_FIX, root=root)
    except OSError as exc:
        raise FsanError(
            f"cannot write the feature cache {path} ({exc.strerror or exc})",
            "Set XDG_CACHE_HOME to a folder that can be written",
        ) from None


def _entry_sum(rows: np.ndarray, seconds: float, record: dict[str, Any]) -> str:
    """sha256 of a cache entry's rows (float32 little-endian), duration and extractor identity."""
    digest = hashlib.sha256(np.ascontiguousarray(rows, "<f4").tobytes())
    identity = {k: record.get(k) for k in extractor.IDENTITY}
    digest.update(json.dumps({"shape": list(rows.shape), "duration": float(seconds),
                              "extractor": identity}, sort_keys=True).encode())
    return digest.hexdigest()


def _from_cache(path: Path, video: Path, record: dict[str, Any]) -> bool:
    """Whether the cache holds valid features of `video` at `path` (the entry of its name); a
    bad entry is removed with a warning (and extracted again by the caller). Where the same
    bytes were cached under another file name, that entry's features are copied under this name,
    so the answer carries the name asked for."""
    entry = _valid_entry(path, video, record)
    if entry is not None:
        return True
    for other in extractor.cache_entries(path):
        found = _read_entry(other, video, record)
        if isinstance(found, tuple):
            rows, seconds = found
            _cache(path, video, record, rows, seconds)
            return True
    return False


def _valid_entry(path: Path, video: Path, record: dict[str, Any]) -> bool | None:
    """True for a valid entry at `path`; None where there is none or it was bad (then removed,
    with a warning saying so)."""
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_dir():
        raise FsanError(f"the feature cache entry {path} is a folder",
                        f"Remove it, or {CACHE_FIX}")
    found = _read_entry(path, video, record, name=video.stem)
    if isinstance(found, tuple):
        return True
    warn(f"the cached features of {video} in {path} are damaged ({found}); extracting them again")
    try:
        path.unlink()
    except OSError as exc:
        raise FsanError(f"cannot remove the damaged cache entry {path} ({exc.strerror or exc})",
                        f"Remove it by hand, or {CACHE_FIX}") from None
    return None


def _read_entry(path: Path, video: Path, record: dict[str, Any],
                name: str | None = None) -> tuple[np.ndarray, float] | str:
    """(rows, seconds) of a cache entry whose every check holds (one video, of `name` if given;
    the source's size; the extractor's record; (T, dim) finite rows and a positive duration, the
    sum stored when written), else why not."""
    try:
        if not path.is_file():
            return "not a file"
        if not h5py.is_hdf5(path):
            return "not an HDF5 file"
        with h5py.File(path, "r") as h5:
            keys = list(h5.keys())
            if len(keys) != 1 or (name is not None and keys[0] != name):
                return f"it holds {keys[:3]}, not the one video '{name or video.stem}'"
            ds = h5[keys[0]]
            if not isinstance(ds, h5py.Dataset):
                return f"'{keys[0]}' is not a dataset"
            if h5.attrs.get("source_size") != video.stat().st_size:
                return "it was written for a file of another size"
            try:
                theirs = extractor.from_attrs(ds.attrs, str(path))
            except FsanError:
                return "its extractor record is damaged"
            if not extractor.same(theirs, record):
                return f"it holds {extractor.describe(theirs)}"
            if len(ds.shape) != 2 or ds.shape[0] == 0 or ds.shape[1] != int(record["dim"]):
                return f"its rows are of shape {ds.shape}, not (T, {record['dim']})"
            rows = ds[()].astype(np.float32)
            seconds = float(np.asarray(ds.attrs.get("duration", np.nan), np.float64).reshape(-1)[0])
            stored = h5.attrs.get("entry_sha256")
            stored = stored.decode() if isinstance(stored, bytes) else stored
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    if not np.isfinite(rows).all():
        return "its rows hold NaN or inf"
    if not (np.isfinite(seconds) and seconds > 0):
        return f"its duration is {seconds:g} s"
    if stored != _entry_sum(rows, seconds, record):
        return "its rows or duration are not those written"
    return rows, seconds
