"""`fsan extract`: video files -> an HDF5 feature file (`fsan ground VIDEO`'s cache:
fsan_cli/video/cache.py; the file's writing: fsan_cli/video/h5file.py).

Output layout (what `fsan prepare --dataset custom` and `fsan ground` read): one float32 (T, D)
dataset per video, named by the file's name without its suffix (the `video` of the custom
annotation lines), with attributes `duration` (seconds), `fps` (rows per second) and the
extractor's record (`extractor`, `extractor_model`, `extractor_sha256`, ...: fsan_cli/video/record.py).

Resumable and atomic: each finished video is written at once to its own small file in
`.FEATURES.h5.parts/` beside the output (temporary name, then renamed), and at the end the output
is rewritten whole (temporary file, fsync, rename) with the old videos and the new ones. A kill
keeps every finished video (the next run takes them from the parts folder), and the output is
never half-written. Videos already in the output are skipped. The output is locked for the
run (a second extract into it is refused, naming the first), and a run first removes the
temporary files a killed one left.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py

from fsan_cli.core.atomic import SUFFIX, check_folder_of, make_folder_of, temp_files
from fsan_cli.core.errors import FsanError, write_error
from fsan_cli.core.lock import FileLock, acquire
from fsan_cli.core.output import log, video_progress, warn
from fsan_cli.video import encode
from fsan_cli.video import record as extractor
from fsan_cli.video.cache import features_for_ground  # noqa: F401 - `fsan ground VIDEO`'s, here as before
from fsan_cli.video.encode import load_encoder
from fsan_cli.video.h5file import truncation, write_h5

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


def extract_video(*args: Any, **kwargs: Any) -> Any:
    """encode.extract_video, looked up at each call (so that replacing either one reaches here)."""
    return encode.extract_video(*args, **kwargs)


def _parts_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.parts"


def _part_path(out: Path, video: str) -> Path:
    return _parts_dir(out) / f"{hashlib.sha1(video.encode()).hexdigest()[:20]}.h5"


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
                    done.setdefault(key, extractor.from_attrs(h5[key].attrs, f"{out}:/{key}"))
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
    [{video, file, status, rows, duration}], failed [{video, file, reason}], seconds.

    The output is locked for the run (`.OUT.lock`, core/lock.py): a second extract into the
    same --out stops at once naming the first; what a killed run left is removed first."""

    out = Path(out)
    check_folder_of(out, "--out")
    videos = find_videos(paths)
    make_folder_of(out, "--out")  # `--out data/x.h5` makes data/, as `fsan train --out` makes its folder
    lock = _lock(out)
    try:
        _clear_leftovers(out)
        return _extract(videos, out, model, weights, fps, batch, device)
    finally:
        lock.release()


def _lock(out: Path) -> FileLock:
    def busy(pid: int | None) -> FsanError:
        who = f"process {pid}" if pid else "another process"
        return FsanError(f"--out {out} is being written by {who}, another fsan extract",
                         "Wait for it to end (a run afterwards skips the videos it added), "
                         "or pass another --out")

    return acquire(out.parent / f".{out.name}.lock", busy,
                   "Make the folder of --out writable, or pass another --out")


def _clear_leftovers(out: Path) -> None:
    """Temporary files that killed runs into `out` left beside it and in its parts folder (this
    process holds the output's lock, so no other run is writing them)."""
    stale = temp_files(out)
    if _parts_dir(out).is_dir():
        stale += sorted(_parts_dir(out).glob(f".*{SUFFIX}"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    if stale:
        log(f"Removed {len(stale)} temporary files an interrupted extract into {out} left")


def _kept(exc: FsanError, out: Path) -> FsanError:
    """A write error of an extract, saying what of the run is kept for the next one; an empty
    parts folder is removed."""
    parts = sorted(_parts_dir(out).glob("*.h5")) if _parts_dir(out).is_dir() else []
    if not parts:
        shutil.rmtree(_parts_dir(out), ignore_errors=True)
        return exc
    return FsanError(exc.message, f"{exc.fix}; the {len(parts)} videos extracted are kept in "
                     f"{_parts_dir(out)}, and a run into the same --out continues from them")


def _extract(videos: dict[str, Path], out: Path, model: str, weights: Path | None, fps: float,
             batch: int, device: Any) -> dict[str, Any]:
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
        try:
            _parts_dir(out).mkdir(exist_ok=True)
        except OSError as exc:
            error = write_error(exc, _parts_dir(out), "pass another --out")
            if error is None:
                raise
            raise error from None
        attrs = extractor.to_attrs(encoder.record)
        with video_progress(len(todo)) as bar:
            for video, path in todo.items():
                bar.start(video)
                details: dict[str, Any] = {}
                try:
                    rows, seconds = extract_video(path, encoder, batch, bar.frames, details=details)
                except FsanError as exc:
                    summary["failed"].append(
                        {"video": video, "file": str(path), "reason": str(exc)}
                    )
                    if len(videos) > 1:
                        warn(f"skipped {path}: {exc}")
                    bar.done()
                    continue
                found = {**attrs, "duration": seconds}
                row = {"video": video, "file": str(path), "status": "extracted",
                       "rows": int(rows.shape[0]), "duration": round(seconds, 3)}
                if details.get("container_duration") is not None:
                    found["container_duration"] = float(details["container_duration"])
                    why = truncation(seconds, details["container_duration"])
                    if why:
                        warn(f"{path} looks truncated: {why}; its features cover the {seconds:g} s "
                             "that decode (the attribute container_duration keeps the other)")
                        row["container_duration"] = round(float(details["container_duration"]), 3)
                try:
                    write_h5(_part_path(out, video), {video: (rows, found)})
                except FsanError as exc:
                    raise _kept(exc, out) from None
                rows_out.append(row)
                bar.done()
    if _parts_dir(out).is_dir():
        parts = sorted(_parts_dir(out).glob("*.h5"))
        if parts:
            try:
                write_h5(out, {}, [out, *parts] if out.exists() else parts)
            except FsanError as exc:
                raise _kept(exc, out) from None
        shutil.rmtree(_parts_dir(out), ignore_errors=True)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


