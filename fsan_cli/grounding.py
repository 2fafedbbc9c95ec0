"""Ground sentences in one video: read its features and queries, answer them with the Predictor.

The library side of `fsan ground` (the command only parses options and calls these):

- `read_video`: one video's (T, D) features and duration from an HDF5 file, in our layout
  (dataset `features`, attribute `duration`) or the official ones (a group holding
  `c3d_features`; a single (T, D) dataset per video).
- `ground_video`: the video's features prepared and every query answered by the one
  `Predictor` (fsan_cli/predict.py) that `fsan evaluate` uses too.
- `grounding_row`: the predictions JSONL line plus the alignment map. The table, heatmap and
  figure are in fsan_cli/ground_render.py.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fsan_cli.errors import FsanError
from fsan_cli.output import log, warn
from fsan_cli.predict import Grounding, Predictor, row_of
from fsan_cli.text import UNK, tokenize

MEMBERS = ("c3d_features", "features")  # a video's matrix inside its group (ActivityNet, ours)
DIDEMO_SECONDS = 30.0  # DiDeMo's six 5-second chunks: its features carry no duration
LAYOUT_HELP = (
    "Pass an HDF5 file with a (T, D) dataset `features` and an attribute `duration` (seconds), "
    "or an official feature file with --video-id"
)


# ----------------------------------------------------------------------------- inputs


def read_queries(args: Sequence[str], stdin: Any = None) -> list[tuple[str, str]]:
    """(where, query) for each QUERY argument; "-" reads one query per line from stdin.

    Blank stdin lines are skipped; a blank argument is an error.
    """
    out: list[tuple[str, str]] = []
    for n, arg in enumerate(args, 1):
        if arg != "-":
            if not tokenize(arg):
                raise FsanError(
                    f"query {n} ({arg!r}) has no words",
                    'Pass a sentence, e.g. fsan ground video.h5 "a person opens the door"',
                )
            out.append((f"query {n}", arg.strip()))
            continue
        lines = (stdin or sys.stdin).read().splitlines()
        before = len(out)
        for i, line in enumerate(lines, 1):
            if line.strip():
                out.append((f"stdin line {i}", line.strip()))
        if len(out) == before:
            raise FsanError(
                "stdin holds no queries", "Pipe one query per line into `fsan ground VIDEO -`"
            )
    return out


@dataclass
class Video:
    video: str
    rows: np.ndarray  # (T, D) as stored
    duration: float | None  # seconds; None when the file has none
    where: str  # file and dataset path, for messages


def read_video(path: Path, video_id: str | None = None) -> Video:
    """One video's features from `path`; errors name the layout that was expected."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FsanError(
            f"video file {path} does not exist", "Pass the path of an HDF5 feature file"
        )
    if not h5py.is_hdf5(path):
        raise FsanError(f"{path} is not an HDF5 file", LAYOUT_HELP)
    try:
        with h5py.File(path, "r") as h5:
            ds, vid, single = _pick(h5, path, video_id)
            where = f"{path}:{ds.name}"
            if ds.shape[0] == 0:
                raise FsanError(
                    f"video '{vid}' in {where} has no feature rows (T = 0)",
                    "Extract features for at least one clip of the video",
                )
            rows = ds[()]
            duration = _duration(ds, h5 if single else None, where)
    except OSError as exc:
        raise FsanError(f"{path} cannot be read as HDF5 ({exc})", LAYOUT_HELP) from None
    return Video(vid, rows, duration, where)


def _pick(h5, path: Path, video_id: str | None):
    """(dataset, video id, whether the file holds only this video)."""
    import h5py

    if isinstance(h5.get("features"), h5py.Dataset):  # our layout: one video per file
        label = video_id or _text_attr(h5.attrs.get("video")) or path.stem
        return _matrix(h5["features"], path), label, True
    keys = list(h5.keys())
    if video_id is not None:
        for key in _aliases(video_id):
            if key in h5:
                return _matrix(h5[key], path), key, len(keys) == 1
        raise FsanError(
            f"video '{video_id}' is not in {path} ({len(keys)} videos there)",
            f"Pass --video-id with one of its keys, e.g. {', '.join(keys[:3]) or '(none)'}",
        )
    if not keys:
        raise FsanError(f"{path} holds no datasets", LAYOUT_HELP)
    if len(keys) > 1:
        raise FsanError(
            f"{path} holds {len(keys)} videos",
            f"Pass --video-id to pick one, e.g. --video-id {keys[0]}",
        )
    return _matrix(h5[keys[0]], path), keys[0], True


def _aliases(video: str) -> list[str]:
    """ActivityNet ids with or without `v_`; DiDeMo keys with or without the file extension."""
    names = [video, video[2:] if video.startswith("v_") else f"v_{video}"]
    if "." in video:
        names.append(video.rsplit(".", 1)[0])
    return names


def _matrix(obj, path: Path):
    """The (T, D) numeric dataset `obj` is, or holds."""
    import h5py

    if isinstance(obj, h5py.Group):
        inner = [obj[m] for m in MEMBERS if isinstance(obj.get(m), h5py.Dataset)]
        inner = inner or [v for v in obj.values() if isinstance(v, h5py.Dataset)]
        if len(inner) != 1:
            raise FsanError(
                f"'{obj.name}' in {path} is a group with members {list(obj.keys())[:5]}, "
                "not one (T, D) feature matrix",
                LAYOUT_HELP,
            )
        obj = inner[0]
    if len(obj.shape) != 2 or obj.dtype.kind not in "fiu":
        raise FsanError(
            f"'{obj.name}' in {path} holds {obj.dtype} values of shape {obj.shape}, "
            "not a (T, D) matrix of clip features",
            LAYOUT_HELP,
        )
    return obj


def _text_attr(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _duration(ds, root, where: str) -> float | None:
    """The `duration` attribute of the dataset, its group, or (one video per file) the file."""
    holders = [ds]
    if ds.parent.name != "/":
        holders.append(ds.parent)
    if root is not None:
        holders.append(root)
    for obj in holders:
        if "duration" in obj.attrs:
            raw = obj.attrs["duration"]
            try:
                return float(np.asarray(raw, dtype=np.float64).reshape(-1)[0])
            except (TypeError, ValueError, IndexError):
                raise FsanError(
                    f"the duration attribute of {where} is {raw!r}, not a number of seconds",
                    "Fix the attribute, or pass --duration SECONDS",
                ) from None
    return None


def resolve_duration(video: Video, flag: float | None, dataset: str | None) -> float:
    """--duration, else the file's attribute, else DiDeMo's 30 s; positive and finite."""
    if flag is not None and video.duration is not None and abs(flag - video.duration) > 1e-3:
        warn(f"--duration {flag:g} replaces the file's duration {video.duration:g}")
    duration = flag if flag is not None else video.duration
    if duration is None and dataset == "didemo":
        log(f"Duration: {DIDEMO_SECONDS:g} s (DiDeMo's six 5-second chunks)")
        duration = DIDEMO_SECONDS
    if duration is None:
        raise FsanError(
            f"{video.where} has no duration attribute",
            "Pass --duration SECONDS (the video's length)",
        )
    if not (math.isfinite(duration) and duration > 0):
        raise FsanError(
            f"the duration of video '{video.video}' is {duration:g} s",
            "It must be positive; pass --duration SECONDS",
        )
    return float(duration)


def check_queries(predictor: Predictor, queries: Sequence[tuple[str, str]]) -> None:
    """Each query has a word the model knows; say where the model reads only the first words.
    Words outside the vocabulary are looked up in its word vectors first (Predictor.extend)."""
    predictor.extend([q for _, q in queries])
    for where, q in queries:
        words = tokenize(q)
        if not words:
            raise FsanError(f"{where} ({q!r}) has no words", "Pass a sentence")
        if len(words) > predictor.max_tokens:
            warn(f"{where} has {len(words)} words; the model reads the first {predictor.max_tokens}")
        read = words[: predictor.max_tokens]
        if all(w not in predictor.word_to_id for w in read):
            raise FsanError(
                f"{where} ({q!r}) has no word the model knows (unknown: {', '.join(read)})",
                f"Rephrase it with common words; the checkpoint knows {len(predictor.vocab) - 2} words",
            )


def ground_video(predictor: Predictor, video: Video, duration: float,
                 queries: Sequence[tuple[str, str]], top_k: int) -> list[Grounding]:
    """Prepare the video once, ground every query, and say on stderr what was read."""
    check_queries(predictor, queries)
    clips = predictor.video_clips(video.rows, video.video)
    t0 = time.perf_counter()
    results = predictor.ground(clips, duration, [q for _, q in queries], top_k)
    rate = len(results) / max(time.perf_counter() - t0, 1e-9)
    log(
        f"Video '{video.video}': {video.rows.shape[0]} rows of {video.rows.shape[1]}-d, "
        f"{duration:g} s, {predictor.clips} clips; {len(results)} queries ({rate:.0f}/s, {predictor.precision})"
    )
    unknown = sorted({w for r in results for w in r.unknown})
    if unknown:
        warn(f"not in the model's vocabulary, read as {UNK}: {', '.join(unknown[:20])}")
    return results


def grounding_row(video: str, duration: float, g: Grounding, nms: float) -> dict[str, Any]:
    """One predictions JSONL line (DESIGN.md) plus the alignment map under its own key."""
    row = row_of(video, g.query, duration, g.moments, g.scores, nms)
    row["alignment_map"] = {
        "tokens": g.tokens,
        "clips": int(g.alignment_map.shape[1]),
        "values": np.round(g.alignment_map.astype(np.float64), 4).tolist(),
    }
    return row
