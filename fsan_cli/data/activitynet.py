"""ActivityNet-Captions: train.json / val_1.json / val_2.json -> train / val / test (paper §4.1).

Annotations: `{"v_x": {"duration": s, "timestamps": [[s, e], ...], "sentences": [...]}}`, one
query per (timestamp, sentence). Times are clipped into [0, duration] (a few end slightly past
it); pairs with start >= end (4 in train), times or a duration that are not finite numbers, and
spans outside the video are dropped and counted. Features:
`sub_activitynet_v1-3.c3d.hdf5`, a group per video `v_x` holding `c3d_features` (T, 500).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fsan_cli.core.errors import FsanError
from fsan_cli.core.text import normalize_query
from fsan_cli.data.annotations import Annotations, entry_errors, find_split_file, seconds_of
from fsan_cli.data.feature_files import FeatureLayout, video_keys
from fsan_cli.data.store import Query

# 2D-TAN names val_1 / val_2 val.json / test.json: both are accepted.
SPLIT_FILES = {
    "train": ("train.json",),
    "val": ("val_1.json", "val.json"),
    "test": ("val_2.json", "test.json"),
}


LAYOUT = FeatureLayout(
    description="a group per video 'v_<id>' holding dataset 'c3d_features' (T, 500), "
    "as in sub_activitynet_v1-3.c3d.hdf5",
    member="c3d_features",
    aliases=video_keys,
)


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FsanError(f"{path} is not readable JSON ({exc})", "Use the official file") from exc
    first = next(iter(data.values()), None) if isinstance(data, dict) else None
    if not isinstance(first, dict) or not {"duration", "timestamps", "sentences"} <= set(first):
        found = type(data).__name__ if first is None else f"entries with keys {sorted(first)}"
        raise FsanError(
            f"{path} is not in the ActivityNet-Captions layout: expected "
            '{"v_x": {"duration", "timestamps", "sentences"}}, found ' + found,
            "Pass the folder of the official train.json, val_1.json and val_2.json",
        )
    return data


def _video(ann: Annotations, split: str, path: Path, video: str, entry: dict) -> list[Query]:
    duration = seconds_of(entry["duration"])
    if len(entry["timestamps"]) != len(entry["sentences"]):
        raise FsanError(
            f"{path}: video {video} has {len(entry['timestamps'])} timestamps but "
            f"{len(entry['sentences'])} sentences",
            "Use the official annotation file",
        )
    ann.durations.setdefault(video, duration)
    queries = []
    for (start, end), sentence in zip(entry["timestamps"], entry["sentences"], strict=True):
        text = normalize_query(str(sentence))
        if not text:
            ann.dropped[(split, "empty sentence")] += 1
            continue
        times = ann.span(split, float(start), float(end), duration)
        if times is not None:
            queries.append(Query(video, text, duration, [times]))
    return queries


def read_annotations(folder: Path, options: Any) -> Annotations:
    ann = Annotations({}, {}, LAYOUT, [])
    expected = '{"duration": s, "timestamps": [[s, e], ...], "sentences": [...]}'
    for split, names in SPLIT_FILES.items():
        path = find_split_file(folder, names, "ActivityNet-Captions", split)
        ann.files.append(path)
        queries: list[Query] = []
        read = 0
        for video, entry in _load(path).items():
            with entry_errors(f"{path}: video {video}", expected):
                read += len(entry["sentences"])
                queries += _video(ann, split, path, video, entry)
        ann.splits[split] = queries
        ann.read[split] = read
    clipped = sum(ann.clipped.values())
    if clipped:
        ann.notes.append(f"{clipped} pairs reaching past [0, duration] were clipped to it")
    return ann
