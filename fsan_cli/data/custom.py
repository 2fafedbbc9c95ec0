"""A user's own videos: one JSON line per query, one (T, D) feature dataset per video.

    {"video": "cooking_01", "duration": 93.5, "query": "the man cuts an onion",
     "times": [12.0, 20.5], "split": "train"}

`video` (an id: a string, or a whole number), `duration` (seconds) and `query` (a string) are
required. `times` is optional (training never reads it; evaluation needs it): one [start, end]
pair or a list of pairs, clipped into [0, duration]. `split` is optional and defaults to "train";
it is one of SPLITS (train, val, test: the splits `train` and `evaluate` read; another name, or
null, is an error naming the line, as a null video or query is).
A line whose duration or times are not finite numbers (NaN, Infinity), or whose times end before
0 or start after the video, is dropped and counted, as one with start >= end.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fsan_cli.core.errors import FsanError
from fsan_cli.core.text import normalize_query
from fsan_cli.data.annotations import (
    BAD_DURATION,
    Annotations,
    clip_span,
    require_file,
    seconds_of,
    utf8_text,
)
from fsan_cli.data.feature_files import FeatureLayout
from fsan_cli.data.store import SPLITS, Query

LAYOUT = FeatureLayout(description="one (T, D) dataset per video keyed by its `video` id")
FIX = "Write one JSON object per line with video, duration, query and optional times and split"


def _pairs(value: Any, where: str) -> list[list[float]]:
    if value is None:
        return []
    try:
        if len(value) == 2 and all(isinstance(v, int | float) for v in value):
            value = [value]
        return [[float(a), float(b)] for a, b in value]
    except (TypeError, ValueError):
        raise FsanError(
            f"{where}: times must be [start, end] or a list of them, got {value!r}", FIX
        ) from None


def _entry(line: str, where: str) -> tuple[str, float, str, Any, str]:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise FsanError(f"{where} is not JSON ({exc})", FIX) from None
    if not isinstance(obj, dict):
        raise FsanError(f"{where} is not a JSON object", FIX)
    absent = [k for k in ("video", "duration", "query") if k not in obj]
    if absent:
        raise FsanError(f"{where} has no {', '.join(absent)}", FIX)
    try:
        duration = seconds_of(obj["duration"])
    except (TypeError, ValueError):
        raise FsanError(
            f"{where}: duration {obj['duration']!r} is not a number of seconds", FIX
        ) from None
    if not duration > 0 and not math.isnan(duration):
        raise FsanError(f"{where}: duration must be positive, got {duration}", FIX)
    video, query, split = obj["video"], obj["query"], obj.get("split", "train")
    if isinstance(video, bool) or not isinstance(video, str | int):
        raise FsanError(f"{where}: video is {json.dumps(video)}, not an id", "Give the video's id as a string")
    if not isinstance(query, str):
        raise FsanError(f"{where}: query is {json.dumps(query)}, not a sentence", "Give the query as a string")
    if split not in SPLITS:  # a store file's name (videos, manifest, ...) would be overwritten
        raise FsanError(f"{where}: split is {json.dumps(split)}, not one of {', '.join(SPLITS)}",
                        f"Use one of {', '.join(SPLITS)}, or leave the field out (train)")
    return str(video), duration, normalize_query(query), obj.get("times"), split


def read_annotations(path: Path, options: Any) -> Annotations:
    if path.is_dir():
        raise FsanError(
            f"--annotations {path} is a folder", "For --dataset custom pass one JSONL file"
        )
    require_file(path, "annotations", "Pass --annotations FILE.jsonl")
    ann = Annotations({}, {}, LAYOUT, [path])
    first_line: dict[str, int] = {}
    with utf8_text(path), open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            video, duration, text, times, split = _entry(line, where)
            ann.read[split] = ann.read.get(split, 0) + 1
            queries = ann.splits.setdefault(split, [])
            if not math.isfinite(duration):
                ann.dropped[(split, BAD_DURATION)] += 1
                continue
            if video in ann.durations and abs(ann.durations[video] - duration) > 1e-3:
                raise FsanError(
                    f"{where}: video {video} has duration {duration}, but "
                    f"{ann.durations[video]} on line {first_line[video]}",
                    "Give each video one duration",
                )
            ann.durations.setdefault(video, duration)
            first_line.setdefault(video, number)
            if not text:
                ann.dropped[(split, "empty query")] += 1
                continue
            pairs = _pairs(times, where)
            spans = [clip_span(a, b, duration) for a, b in pairs]
            kept = [t for t, _ in spans if t is not None]
            if pairs and not kept:
                ann.dropped[(split, spans[0][1])] += 1
                continue
            if kept != pairs:  # clipped, or some annotators dropped
                ann.clipped[split] += 1
            queries.append(Query(video, text, duration, kept))
    if not ann.read:
        raise FsanError(f"{path} holds no queries", FIX)
    return ann
