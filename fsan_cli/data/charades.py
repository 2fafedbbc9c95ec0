"""Charades-STA: charades_sta_{train,test}.txt -> train / test, durations from Charades_v1_*.csv.

Lines are `vid start end##sentence`; a video's duration is the `length` column of
`Charades_v1_{train,test}.csv`. Lines that end after the video (1,805 train, 562 test), under
`--charades-convention`:

- `clip` (default): the end is clipped to the duration and the line carries `"past_end": true`
  (every line carries the flag); an extra split `test_clean` holds the test lines that were inside
  the video (3,158 of 3,720), the set peers evaluate on.
- `drop`: those lines are dropped from every split (test keeps 3,158).

Lines with start >= end (4 train) or starting after the video are dropped under both.
Features: one (T, D) dataset per video keyed by its id (the common I3D / VGG layout).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from fsan_cli.core.errors import FsanError
from fsan_cli.core.text import normalize_query
from fsan_cli.data.annotations import (
    Annotations,
    find_split_file,
    read_utf8,
    require_file,
    utf8_text,
)
from fsan_cli.data.feature_files import FeatureLayout
from fsan_cli.data.store import Query

SPLITS = ("train", "test")
LAYOUT = FeatureLayout(description="one (T, D) dataset per video keyed by its id, e.g. '3MSZA'")


def _durations(folder: Path, ann: Annotations) -> dict[str, float]:
    durations: dict[str, float] = {}
    for split in SPLITS:
        path = require_file(
            folder / f"Charades_v1_{split}.csv",
            f"Charades metadata for {split}",
            f"Put the official Charades_v1_{split}.csv (its `length` column gives the durations) "
            f"in {folder}",
        )
        ann.files.append(path)
        with utf8_text(path), open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"id", "length"} <= set(reader.fieldnames):
                raise FsanError(
                    f"{path} has no `id` and `length` columns (found {reader.fieldnames})",
                    "Use the official Charades_v1 CSV file",
                )
            for row in reader:
                try:
                    durations[row["id"]] = float(row["length"])
                except ValueError:
                    continue  # a video without a length: its lines are dropped and counted
    return durations


def _parse(line: str, path: Path, number: int) -> tuple[str, float, float, str]:
    head, sep, sentence = line.partition("##")
    parts = head.split()
    try:
        if not sep or len(parts) != 3:
            raise ValueError
        return parts[0], float(parts[1]), float(parts[2]), normalize_query(sentence)
    except ValueError:
        raise FsanError(
            f"{path}:{number} is not a Charades-STA line: expected `vid start end##sentence`, "
            f"found {line[:60]!r}",
            "Use the official charades_sta_*.txt files",
        ) from None


def read_annotations(folder: Path, options: Any) -> Annotations:
    convention = getattr(options, "charades_convention", "clip")
    ann = Annotations({}, {}, LAYOUT, [])
    files = {
        s: find_split_file(folder, (f"charades_sta_{s}.txt",), "Charades-STA", s) for s in SPLITS
    }
    durations = _durations(folder, ann)
    ann.files[:0] = files.values()
    past: dict[str, int] = {}
    for split, path in files.items():
        queries: list[Query] = []
        past[split] = 0
        lines = read_utf8(path).splitlines()
        ann.read[split] = sum(1 for line in lines if line.strip())
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            video, start, end, sentence = _parse(line, path, number)
            if video not in durations:
                ann.dropped[(split, "video not in Charades_v1 CSV")] += 1
                continue
            duration = durations[video]
            ann.durations[video] = duration
            past_end = start < end and start < duration < end
            if past_end and convention == "drop":
                ann.dropped[(split, "ends after the video")] += 1
                continue
            times = ann.span(split, start, end, duration)
            if times is None:
                continue
            past[split] += past_end
            queries.append(Query(video, sentence, duration, [times], {"past_end": past_end}))
        ann.splits[split] = queries
    if convention == "clip":
        ann.splits["test_clean"] = [q for q in ann.splits["test"] if not q.extra["past_end"]]
        ann.derived["test_clean"] = "test"
        ann.notes.append(
            f"{past['train']} train and {past['test']} test lines end after the video: end clipped "
            'to the duration, flagged "past_end"; split test_clean leaves them out'
        )
    return ann
