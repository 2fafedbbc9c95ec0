"""`fsan extract` and `fsan ground VIDEO`: video files -> an HDF5 feature file.

Output layout (what `fsan prepare --dataset custom` and `fsan ground` read): one float32 (T, D)
dataset per video, named by the file's name without its suffix (the `video` of the custom
annotation lines), with attributes `duration` (seconds), `fps` (rows per second) and the
extractor's record (`extractor`, `extractor_model`, `extractor_sha256`, ...: fsan_cli/video/record.py).

Resumable and atomic: each finished video is written at once to its own small file in
`.FEATURES.h5.parts/` beside the output (temporary name, then renamed), and at the end the output
is rewritten whole (temporary file, fsync, rename) with the old videos and the new ones. A kill
keeps every finished video (the next run takes them from the parts folder), and the output is
never half-written. Videos already in the output are skipped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fsan_cli.core import checkpoint
from fsan_cli.core.atomic import SUFFIX, _umask
from fsan_cli.core.errors import FsanError, write_error
from fsan_cli.core.output import log, video_progress, warn
from fsan_cli.video import record as extractor
from fsan_cli.video.encode import extract_video, load_encoder, require_extra

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".wmv",
                  ".flv", ".ts", ".3gp", ".ogv"}  # fmt: skip
HDF5_SUFFIXES = {".h5", ".hdf5", ".hdf", ".he5"}


def find_videos(paths: Sequence[Path]) -> dict[str, Path]:
    """{video id: file} of the files given and the video files (by suffix) under the folders
    given, recursively, in name order; ids are file names without the suffix."""
    found: dict[str, Path] = {}
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()
            )
            if not files:
                raise FsanError(
                    f"{path} holds no video files ({', '.join(sorted(VIDEO_SUFFIXES))})",
                    "Pass a folder of videos, or the files themselves",
                )
        elif path.exists():
            files = [path]
        else:
            raise FsanError(f"video {path} does not exist", "Pass video files or folders of them")
        for f in files:
            if f.stem in found and found[f.stem].resolve() != f.resolve():
                raise FsanError(
                    f"two videos have the id '{f.stem}': {found[f.stem]} and {f}",
                    "Rename one: the id (the file name without its suffix) names its features",
                )
            found[f.stem] = f
    return found


def is_video_file(path: Path) -> bool:
    """Whether `fsan ground` reads `path` as a video: not an HDF5 file, and a video suffix or
    (without an HDF5 suffix) a file PyAV opens."""

    path = Path(path)
    if not path.is_file() or h5py.is_hdf5(path):
        return False
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return True
    if suffix in HDF5_SUFFIXES:
        return False
    try:
        import av  # the optional [video] extra (PyAV)

        with av.open(str(path)) as container:
            return bool(container.streams.video)
    except Exception:  # noqa: BLE001 - not installed, or not a video: read as HDF5 (its error)
        return False


# ----------------------------------------------------------------------------- the output file


def _parts_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.parts"


def _part_path(out: Path, video: str) -> Path:
    return _parts_dir(out) / f"{hashlib.sha1(video.encode()).hexdigest()[:20]}.h5"


def _write_h5(
    path: Path, videos: dict[str, tuple[np.ndarray, dict[str, Any]]], copy_from: Sequence[Path] = ()
) -> None:
    """Write `videos` ({id: (rows, attrs)}) and every dataset of the files `copy_from` into a
    temporary file beside `path`, fsync, rename over it."""

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=SUFFIX, dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # as open() would make it, not mkstemp's 0600
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as dst:
            for source in copy_from:
                with h5py.File(source, "r") as src:
                    for key in src:
                        if key not in dst:
                            src.copy(src[key], dst, name=key)
            for video, (rows, attrs) in videos.items():
                ds = dst.create_dataset(video, data=rows.astype(np.float32))
                for k, v in attrs.items():
                    ds.attrs[k] = v
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        error = write_error(exc, path, "pass another --out")
        if error is not None:
            raise error from None
        raise


def _done(out: Path) -> dict[str, dict[str, Any] | None]:
    """{video: extractor record} of the videos in the output and in its parts folder."""
    done: dict[str, dict[str, Any] | None] = {}
    files = sorted(_parts_dir(out).glob("*.h5")) if _parts_dir(out).is_dir() else []
    if out.exists():
        if not out.is_file() or not h5py.is_hdf5(out):
            raise FsanError(
                f"--out {out} exists and is not an HDF5 feature file",
                "Pass another --out (extract adds videos to an HDF5 file it wrote)",
            )
        files = [out, *files]
    for f in files:
        try:
            with h5py.File(f, "r") as h5:
                for key in h5:
                    done.setdefault(key, extractor.from_attrs(h5[key].attrs))
        except OSError:
            if f == out:
                raise FsanError(
                    f"--out {out} cannot be read as HDF5", "Pass another --out"
                ) from None
            f.unlink(missing_ok=True)  # a part a kill cut short: extracted again
    return done


def extract_files(
    paths: Sequence[Path],
    out: Path,
    model: str,
    weights: Path | None,
    fps: float,
    batch: int,
    device: Any,
) -> dict[str, Any]:
    """Extract every video of `paths` not yet in `out`; the summary: out, extractor, videos
    [{video, file, status, rows, duration}], failed [{video, file, reason}], seconds."""

    out = Path(out)
    if not out.parent.is_dir():
        raise FsanError(f"the folder of --out {out} does not exist", "Create it first")
    videos = find_videos(paths)
    done = _done(out)
    todo = {v: f for v, f in videos.items() if v not in done}
    rows_out = [
        {"video": v, "file": str(f), "status": "already there"}
        for v, f in videos.items()
        if v in done
    ]
    summary: dict[str, Any] = {"out": str(out), "extractor": None, "videos": rows_out, "failed": []}
    t0 = time.perf_counter()
    if rows_out:
        log(f"{len(rows_out)} of {len(videos)} videos are already in {out}: skipped")
    if todo:
        encoder = load_encoder(model, weights, device, fps)
        summary["extractor"] = encoder.record
        others = {v: r for v, r in done.items() if not extractor.same(r, encoder.record)}
        if others:
            video, record = next(iter(others.items()))
            raise FsanError(
                f"{out} holds '{video}' as {extractor.describe(record)}, and this run "
                f"extracts {extractor.describe(encoder.record)}",
                "Extract into another --out: a feature file holds one extractor's features",
            )
        _parts_dir(out).mkdir(exist_ok=True)
        attrs = extractor.to_attrs(encoder.record)
        with video_progress(len(todo)) as bar:
            for video, path in todo.items():
                bar.start(video)
                try:
                    rows, seconds = extract_video(path, encoder, batch, bar.frames)
                except FsanError as exc:
                    summary["failed"].append(
                        {"video": video, "file": str(path), "reason": str(exc)}
                    )
                    if len(videos) > 1:
                        warn(f"skipped {path}: {exc}")
                    bar.done()
                    continue
                _write_h5(_part_path(out, video), {video: (rows, {**attrs, "duration": seconds})})
                rows_out.append(
                    {
                        "video": video,
                        "file": str(path),
                        "status": "extracted",
                        "rows": int(rows.shape[0]),
                        "duration": round(seconds, 3),
                    }
                )
                bar.done()
    if _parts_dir(out).is_dir():
        parts = sorted(_parts_dir(out).glob("*.h5"))
        if parts:
            _write_h5(out, {}, [out, *parts] if out.exists() else parts)
        shutil.rmtree(_parts_dir(out), ignore_errors=True)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


# ----------------------------------------------------------------------------- fsan ground VIDEO


def features_for_ground(video: Path, ckpt_path: Path, weights: Path | None, device: Any) -> Path:
    """The HDF5 features of `video` as the checkpoint's extractor gives them: from the cache
    (extractor.cache_dir) or extracted into it now. A checkpoint of other features is refused."""

    ckpt = checkpoint.load(ckpt_path)
    record = ckpt.get("extractor")
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
    cached = extractor.cache_path(video, record)
    if cached.is_file():
        log(f"Features of {video}: {cached} (cached)")
        return cached
    encoder = load_encoder(str(record["model"]), weights, device, float(record["fps"]))
    if not extractor.same(encoder.record, record):
        raise FsanError(
            f"the checkpoint {ckpt_path} was trained on {extractor.describe(record)}, and "
            f"{weights if weights is not None else record['model']} gives {extractor.describe(encoder.record)}",
            f"Pass --weights with the folder of the checkpoint's weights ({record['model']})",
        )
    rows, seconds = extract_video(video, encoder)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        attrs = {**extractor.to_attrs(record), "duration": seconds}
        _write_h5(cached, {video.stem: (rows, attrs)})
    except OSError as exc:
        raise FsanError(
            f"cannot write the feature cache {cached} ({exc.strerror or exc})",
            "Set XDG_CACHE_HOME to a folder that can be written",
        ) from None
    log(f"Features of {video}: {rows.shape[0]} frames at {record['fps']:g}/s, cached in {cached}")
    return cached
