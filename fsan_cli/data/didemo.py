"""DiDeMo: {train,val,test}_data.json -> train / val / test (paper §4.1), official protocol kept.

Each entry `{annotation_id, description, video, times, num_segments, dl_link}`; `times` holds one
inclusive pair of 5-second chunk indices per annotator. A query keeps every annotator's pair as
seconds [5a, 5b + 5] in `times`, and as chunk indices in `chunks` beside its `annotation_id`.

Duration: every video is stored as 30.0 s (six 5-second chunks). The annotations do not give the
true length (`num_segments` 5 means the sixth chunk is past the end, and its feature row is zero),
and the official protocol scores the 21 chunk pairs of a 30 s grid, so clip j of N_v = 6 is
exactly chunk j. Features: `average_fc7.h5`, one (6, 4096) dataset per video, keyed by the video's
file name; PCA to 500 (paper §4.2) is on by default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fsan_cli.core.errors import FsanError
from fsan_cli.core.text import normalize_query
from fsan_cli.data.annotations import Annotations, entry_errors, find_split_file
from fsan_cli.data.feature_files import FeatureLayout, video_keys
from fsan_cli.data.store import Query

CHUNK_SECONDS = 5.0
CHUNKS = 6
DURATION = CHUNK_SECONDS * CHUNKS
SPLIT_FILES = {s: (f"{s}_data.json",) for s in ("train", "val", "test")}
FIELDS = {"annotation_id", "description", "video", "times"}


LAYOUT = FeatureLayout(
    description="one (6, 4096) dataset per video keyed by its file name, as in average_fc7.h5",
    aliases=video_keys,
)


def _load(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FsanError(f"{path} is not readable JSON ({exc})", "Use the official file") from exc
    if not isinstance(data, list) or (data and not set(data[0]) >= FIELDS):
        found = (
            f"entries with keys {sorted(data[0])}"
            if isinstance(data, list)
            else f"a {type(data).__name__}"
        )
        raise FsanError(
            f"{path} is not in the DiDeMo layout: expected a list of "
            f"{{{', '.join(sorted(FIELDS))}, ...}}, found {found}",
            "Pass the folder of the official train_data.json, val_data.json and test_data.json",
        )
    return data


def _chunks(times: list) -> list[list[int]]:
    """The annotators' valid chunk pairs (0 <= a <= b < 6)."""
    out = []
    for pair in times:
        a, b = int(pair[0]), int(pair[1])
        if 0 <= a <= b < CHUNKS:
            out.append([a, b])
    return out


def _query(ann: Annotations, split: str, entry: dict) -> Query | None:
    text = normalize_query(str(entry["description"]))
    chunks = _chunks(entry["times"])
    if not text:
        ann.dropped[(split, "empty description")] += 1
        return None
    if not chunks:
        ann.dropped[(split, "no valid chunk pair")] += 1
        return None
    video = str(entry["video"])
    ann.durations[video] = DURATION
    times = [[CHUNK_SECONDS * a, CHUNK_SECONDS * (b + 1)] for a, b in chunks]
    extra = {"annotation_id": entry["annotation_id"], "chunks": chunks}
    return Query(video, text, DURATION, times, extra)


def read_annotations(folder: Path, options: Any) -> Annotations:
    ann = Annotations({}, {}, LAYOUT, [])
    for split, names in SPLIT_FILES.items():
        path = find_split_file(folder, names, "DiDeMo", split)
        ann.files.append(path)
        queries: list[Query] = []
        entries = _load(path)
        for number, entry in enumerate(entries):
            with entry_errors(
                f"{path}: entry {number}", "{annotation_id, description, video, times}"
            ):
                query = _query(ann, split, entry)
            if query is not None:
                queries.append(query)
        ann.splits[split] = queries
        ann.read[split] = len(entries)
    ann.notes.append("every video is stored as 30 s (six 5-second chunks)")
    return ann
