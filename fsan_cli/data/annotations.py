"""Annotations as the dataset adapters read them, and the checks and edits `fsan prepare` makes
to them (clipping spans, limits, missing videos, a val split carved from train)."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fsan_cli.core.errors import FsanError
from fsan_cli.data.feature_files import FeatureLayout
from fsan_cli.data.store import Query


@dataclass
class Annotations:
    """What an adapter read. `read`: queries per split in the files; `derived`: splits that are
    subsets of another split, {name: parent} (--limit-videos keeps the parent's videos)."""

    splits: dict[str, list[Query]]
    durations: dict[str, float]
    layout: FeatureLayout
    files: list[Path]
    read: dict[str, int] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)  # (split, reason) -> queries
    clipped: Counter = field(default_factory=Counter)  # split -> queries with times clipped
    notes: list[str] = field(default_factory=list)
    derived: dict[str, str] = field(default_factory=dict)

    def span(self, split: str, start: float, end: float, duration: float) -> list[float] | None:
        """Times clipped into [0, duration]; None (counted as dropped) when nothing is left."""
        times, problem = clip_span(start, end, duration)
        if problem:
            self.dropped[(split, problem)] += 1
        elif times != [start, end]:
            self.clipped[split] += 1
        return times


def clip_span(start: float, end: float, duration: float) -> tuple[list[float] | None, str | None]:
    """([start, end] clipped into [0, duration], None) or (None, why it cannot be kept): a
    duration or time that is not a finite number (NaN, Infinity), start >= end, a span that
    ends before 0 or starts after the video."""
    if not (math.isfinite(duration) and duration > 0):
        return None, BAD_DURATION
    if not (math.isfinite(start) and math.isfinite(end)):
        return None, "time is not a finite number"
    if start >= end:
        return None, "start >= end"
    if end <= 0:
        return None, "ends before the video starts"
    if start >= duration:
        return None, "starts after the video ends"
    return [max(0.0, float(start)), min(float(duration), float(end))], None


BAD_DURATION = "duration is not a positive finite number"


def seconds_of(value: object) -> float:
    """A video's duration as an annotation file writes it: a number or a numeric string. A JSON
    true or false (float(True) is 1.0), null, list or object raises TypeError saying it as
    written; a string that is no number, ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"duration {json.dumps(value)} is not a number of seconds")
    return float(value)


@contextmanager
def entry_errors(where: str, expected: str) -> Iterator[None]:
    """Turn a malformed annotation entry (KeyError, TypeError, ...) into a FsanError naming it."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise FsanError(
            f"{where} is malformed ({type(exc).__name__}: {exc}); expected {expected}",
            "Use the official annotation file",
        ) from None


@contextmanager
def utf8_text(path: Path) -> Iterator[None]:
    """Reading `path` as UTF-8 in the block: a file in another encoding is a FsanError naming
    the line and byte, not a UnicodeDecodeError."""
    try:
        yield
    except UnicodeDecodeError:
        raw = Path(path).read_bytes()
        try:
            raw.decode("utf-8")
            at = 0
        except UnicodeDecodeError as exc:
            at = exc.start
        line, line_start = raw.count(b"\n", 0, at) + 1, raw.rfind(b"\n", 0, at) + 1
        raise FsanError(
            f"{path}:{line} is not UTF-8 text (byte 0x{raw[at]:02x} at column {at - line_start + 1}: "
            "latin-1 or another 8-bit encoding?)",
            f"Save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path} > {Path(path).stem}.utf8"
            f"{Path(path).suffix}`",
        ) from None


def read_utf8(path: Path) -> str:
    with utf8_text(path):
        return Path(path).read_text(encoding="utf-8")


def require_file(path: Path, what: str, fix: str) -> Path:
    if not path.is_file():
        raise FsanError(f"missing {what}: {path} does not exist", fix)
    return path


def find_split_file(folder: Path, names: tuple[str, ...], dataset: str, split: str) -> Path:
    """The first of `names` that exists in `folder` (an annotations folder)."""
    if not folder.is_dir():
        raise FsanError(
            f"--annotations {folder} is not a folder",
            f"Pass the folder that holds the {dataset} annotation files ({', '.join(names)}, ...)",
        )
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise FsanError(
        f"missing split file for {split}: {folder} has no {' or '.join(names)}",
        f"Put the official {dataset} annotation files in {folder} (see docs/datasets.md)",
    )


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def apply_limit(ann: Annotations, limit: int) -> None:
    """Keep the first `limit` videos of each split (a derived split follows its parent)."""
    keep: dict[str, set[str]] = {}
    for name, queries in ann.splits.items():
        if name in ann.derived:
            continue
        seen: dict[str, None] = {}
        for q in queries:
            if q.video not in seen:
                if len(seen) == limit:
                    break
                seen[q.video] = None
        keep[name] = set(seen)
    for name, queries in ann.splits.items():
        videos = keep[ann.derived.get(name, name)]
        ann.splits[name] = [q for q in queries if q.video in videos]


def overlap_warnings(ann: Annotations) -> list[str]:
    """What prepare keeps but says: lines that repeat another line of their split exactly, and
    videos of train that are in another split too (a split derived from another is skipped)."""
    warnings = []
    for name, queries in ann.splits.items():
        if name in ann.derived:
            continue
        seen = Counter(json.dumps(q.to_json(), sort_keys=True) for q in queries)
        repeats = sum(n - 1 for n in seen.values())
        if repeats:
            warnings.append(f"{repeats} {name} lines repeat another line exactly (same video, sentence "
                            "and times); kept, so they count more than once")
    train = {q.video for q in ann.splits.get("train", [])}
    for name, queries in ann.splits.items():
        if name == "train" or ann.derived.get(name) == "train":
            continue
        both = list(dict.fromkeys(q.video for q in queries if q.video in train))
        if both:
            shown = ", ".join(both[:3]) + (", ..." if len(both) > 3 else "")
            warnings.append(f"{len(both)} videos are in both train and {name} ({shown}): the model is "
                            f"scored on {name} videos it was trained on")
    return warnings


def annotated_videos(ann: Annotations) -> list[str]:
    order: dict[str, None] = {}
    for queries in ann.splits.values():
        for q in queries:
            order.setdefault(q.video, None)
    return list(order)


def drop_missing(ann: Annotations, absent: set[str]) -> None:
    for name, queries in ann.splits.items():
        kept = [q for q in queries if q.video not in absent]
        if len(kept) != len(queries):
            ann.dropped[(name, "video not in the feature file")] += len(queries) - len(kept)
        ann.splits[name] = kept


MIN_MATCH_VIDEOS = 6  # sentence-only data: fewer videos are all trained on, none held out


def has_times(ann: Annotations) -> bool:
    """Whether any query carries annotated times (sentence-only data, the weakly supervised
    case, has none)."""
    return any(q.times for queries in ann.splits.values() for q in queries)


def carve_val(ann: Annotations, share: float) -> None:
    """Hold out `share` of the train videos (all their queries) as a val split for model
    selection, drawn by a fixed seed from the sorted video ids, so the same files give the
    same split. Benchmarks without a val split (Charades-STA) otherwise invite selecting on test.

    Sentence-only data keep a val split only where it can measure something: at least two videos
    held out, whose sentences choose the epoch by matching (fsan train); with fewer than
    MIN_MATCH_VIDEOS videos every one is trained on."""
    train = ann.splits["train"]
    videos = sorted({q.video for q in train})
    timed = has_times(ann)
    if not timed and len(videos) < MIN_MATCH_VIDEOS:
        ann.notes.append(f"no times in the files and {len(videos)} videos: all are trained on, none held "
                         "out (the last epoch is kept; at least "
                         f"{MIN_MATCH_VIDEOS} videos let a held-out val split choose it by matching)")
        return
    n = min(len(videos) - 1, max(1 if timed else 2, round(share * len(videos))))
    if n < 1:
        return
    held_ids = {videos[i] for i in np.random.default_rng(0).permutation(len(videos))[:n]}
    val = [q for q in train if q.video in held_ids]
    ann.splits["train"] = [q for q in train if q.video not in held_ids]
    order = list(ann.splits)
    ann.splits["val"] = val
    at = order.index("train") + 1
    ann.splits = {k: ann.splits[k] for k in [*order[:at], "val", *order[at:]]}
    read = ann.read.get("train", len(train))
    ann.read["val"], ann.read["train"] = len(val), read - len(val)
    why = ("for model selection" if timed else
           "to choose the epoch by matching (does the model rank a sentence's own video first?), "
           "which needs no times")
    ann.notes.append(
        f"no val split in the files: {n} of {len(videos)} train videos ({len(val)} queries, "
        f"{100 * n / len(videos):.0f}%) held out as val {why} (--val-share {share:g}; "
        "0 keeps train whole)"
    )
