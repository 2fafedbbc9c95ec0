"""Scoring a predictions file against a split: match each row to its query (by video and text, or
DiDeMo's annotation_id), check what the protocol needs, and compute the metrics of
fsan_cli/evaluate/metrics.py in one vectorised pass."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from fsan_cli.core.errors import FsanError
from fsan_cli.core.text import normalize_query
from fsan_cli.evaluate.metrics import (
    DIDEMO_CHUNK_SECONDS,
    didemo_per_query,
    didemo_segments,
    didemo_summary,
    moment_summary,
    padded_hits,
    protocol,
    segment_lut,
)


def _text_key(video: Any, query: Any) -> tuple[Any, str]:
    return (video, normalize_query(str(query)))


def _line(row: dict, i: int) -> int:
    return int(getattr(row, "line", i + 1))


def match_predictions(
    dataset: str, queries: Sequence[Any], predictions: Sequence[dict], in_split_order: bool = False
) -> tuple[list[int | None], list[str]]:
    """For each query, the index of its prediction row (None when missing), and warnings.

    A row with an `annotation_id` matches the query with that id; any other row matches by its
    video and its query text, normalised as the store normalises it (surrounding and repeated
    whitespace: ActivityNet-Captions' official sentences begin with a space). Queries of one
    video with the same text take such rows in file order, and a warning says so when their
    times differ, unless the rows are known to follow the split's order (fsan's own).
    """
    by_id: dict[str, list[int]] = defaultdict(list)
    by_text: dict[Any, list[int]] = defaultdict(list)
    for qi, q in enumerate(queries):
        if "annotation_id" in q.extra:
            by_id[str(q.extra["annotation_id"])].append(qi)
        by_text[_text_key(q.video, q.query)].append(qi)
    videos = {q.video for q in queries}
    matched: list[int | None] = [None] * len(queries)
    unknown_video: list[int] = []
    unknown_query: list[int] = []
    extra: list[int] = []
    in_order: set[Any] = set()  # text keys of several queries that took rows by text
    for ri, row in enumerate(predictions):
        rid = row.get("annotation_id")
        key = _text_key(row.get("video"), row.get("query", ""))
        candidates = by_id.get(str(rid)) if rid is not None and str(rid) in by_id else by_text.get(key)
        if candidates is None:
            (unknown_query if row.get("video") in videos else unknown_video).append(ri)
            continue
        free = next((qi for qi in candidates if matched[qi] is None), None)
        if free is None:
            extra.append(ri)
            continue
        matched[free] = ri
        if candidates is by_text.get(key) and len(candidates) > 1:
            in_order.add(key)
    warnings = []
    for rows, what in (
        (unknown_video, "name videos that are not in this split"),
        (unknown_query, "name queries that are not in this split"),
        (extra, "repeat a query already predicted"),
    ):
        if rows:
            first = predictions[rows[0]]
            warnings.append(
                f"{len(rows)} prediction line(s) {what} and were ignored (first: line "
                f"{_line(first, rows[0])}, video '{first.get('video')}', query "
                f"'{_clip(str(first.get('query')))}')"
            )
    ambiguous = [] if in_split_order else [k for k in in_order if len({str(queries[qi].times) for qi in by_text[k]}) > 1]
    if ambiguous:
        video, text = sorted(ambiguous, key=str)[0]
        warnings.append(
            f"{len(ambiguous)} texts are asked more than once of one video with other times "
            f"(first: video '{video}', query '{_clip(text)}'): their rows were matched in file "
            "order; give each row the query's annotation_id to match it exactly"
        )
    return matched, warnings


def _clip(text: str, n: int = 50) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def didemo_chunks(q: Any) -> list[list[int]]:
    """A DiDeMo query's annotator chunk pairs: the store's "chunks", else derived from seconds."""
    if "chunks" in q.extra:
        return [[int(a), int(b)] for a, b in q.extra["chunks"]]
    s = DIDEMO_CHUNK_SECONDS
    return [[int(math.floor(a / s + 1e-6)), int(math.ceil(b / s - 1e-6)) - 1] for a, b in q.times]


def check_annotated(dataset: str, queries: Sequence[Any]) -> None:
    """FsanError unless the split has queries and every one has ground truth to score against."""
    kind = protocol(dataset)["kind"]
    if not queries:
        raise FsanError("the split holds no queries", "Check --split and the prepared store")
    no_gt = [q for q in queries if not (didemo_chunks(q) if kind == "didemo" else q.times)]
    if no_gt:
        raise FsanError(
            f"{len(no_gt)} queries of this split have no ground-truth times "
            f"(first: video '{no_gt[0].video}', query '{_clip(no_gt[0].query)}')",
            "Evaluate on an annotated split",
        )


def score(
    dataset: str, queries: Sequence[Any], predictions: Sequence[dict],
    thresholds: Sequence[float] | None = None,
) -> tuple[dict[str, float], list[str]]:
    """Score prediction rows against a split's queries under the dataset's protocol.

    Returns (metrics in percent, warnings). Queries without a prediction count as misses; rows
    for unknown videos or queries are ignored with a count. Raises FsanError when nothing can be
    scored, or on rows the protocol cannot read (with the line number). `thresholds` replaces the
    protocol's IoU thresholds.
    """
    metrics, warnings, _ = score_details(dataset, queries, predictions, thresholds=thresholds)
    return metrics, warnings


def score_details(
    dataset: str, queries: Sequence[Any], predictions: Sequence[dict], in_split_order: bool = False,
    thresholds: Sequence[float] | None = None,
) -> tuple[dict[str, float], list[str], int]:
    """`score`, plus how many queries had a prediction."""
    p = protocol(dataset, thresholds)
    check_annotated(dataset, queries)
    matched, warnings = match_predictions(dataset, queries, predictions, in_split_order)
    found = [i for i in matched if i is not None]
    if not found:
        raise FsanError(
            f"none of the {len(predictions)} predictions matches a query of this split "
            f"({len(queries)} queries)",
            "Check --dataset and --split, and that the file was written for them",
        )
    missing = len(queries) - len(found)
    if missing:
        warnings.append(
            f"{missing} of {len(queries)} queries have no prediction and count as misses"
        )
    if p["kind"] == "didemo":
        metrics = _score_didemo(p, queries, predictions, matched, warnings)
    else:
        metrics = _score_moments(p, queries, predictions, matched, warnings)
    return metrics, warnings, len(found)


def _flatten(lists: Sequence[Sequence[Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged lists of [start, end, ...] -> flat (N, 2) float64 and per-list lengths (Q,)."""
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    flat = [m[:2] for x in lists for m in x]
    return np.array(flat, dtype=np.float64).reshape(-1, 2), lengths


def _pad_flat(flat: np.ndarray, lengths: np.ndarray, limit: int | None = None):
    """Flat (N, 2) rows grouped by `lengths` -> (Q, n, 2) keeping the first `limit`, and a mask."""
    q = len(lengths)
    kept = lengths if limit is None else np.minimum(lengths, limit)
    n = int(kept.max()) if q else 0
    qidx = np.repeat(np.arange(q), lengths)
    pos = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = pos < kept[qidx]
    out = np.zeros((q, n, 2))
    out[qidx[keep], pos[keep]] = flat[keep]
    return out, np.arange(n)[None, :] < kept[:, None]


def _score_moments(p, queries, predictions, matched, warnings) -> dict[str, float]:
    kmax = max(p["ks"])
    rows = [predictions[ri]["moments"] if ri is not None else () for ri in matched]
    flat, lengths = _flatten(rows)
    durations = np.array([q.duration for q in queries], dtype=np.float64)
    _check_within(flat, lengths, durations, queries, predictions, matched)
    short = int(((lengths < kmax) & np.array([ri is not None for ri in matched])).sum())
    if short:
        warnings.append(
            f"{short} predicted queries have fewer than {kmax} moments; "
            f"R@{kmax} counts only the moments given"
        )
    pred, pmask = _pad_flat(flat, lengths, kmax)
    gt, gmask = _pad_flat(*_flatten([q.times for q in queries]))
    hits, top1 = padded_hits(pred, pmask, gt, gmask, p["ks"], p["thresholds"])
    return moment_summary(hits, top1, p["ks"], p["thresholds"])


def _check_within(flat, lengths, durations, queries, predictions, matched) -> None:
    if not len(flat):
        return
    dur = np.repeat(durations, lengths)
    tol = 1e-2 + 1e-6 * dur
    s, e = flat[:, 0], flat[:, 1]
    bad = (s < -tol) | (e > dur + tol) | (s > e) | ~np.isfinite(flat).all(axis=1)
    if bad.any():
        j = int(np.argmax(bad))
        qi = int(np.searchsorted(np.cumsum(lengths), j, side="right"))
        ri, q = matched[qi], queries[qi]
        raise FsanError(
            f"line {_line(predictions[ri], ri)}: moment [{s[j]:g}, {e[j]:g}] is outside the video "
            f"'{q.video}' of {q.duration:g} s (moments must lie in [0, duration] with start <= end)",
            "Clip the predictions to each video's duration",
        )


def _score_didemo(p, queries, predictions, matched, warnings) -> dict[str, float]:
    n_chunks = p["chunks"]
    segs = [list(x) for x in didemo_segments(n_chunks)]
    given = [predictions[ri].get("segments") if ri is not None else segs for ri in matched]
    n_seg = len(segs)
    try:
        rankings = np.array(given, dtype=np.int64)  # (Q, 21, 2) when every row is well formed
        bad = _bad_rankings(rankings, n_chunks) if rankings.shape[1:] == (n_seg, 2) else None
    except (TypeError, ValueError):
        bad = None
    if bad is None:  # some row is ragged or not numbers: find it
        bad = np.array([not _ranking_ok(g, n_chunks) for g in given])
    if bad.any():
        qi = int(np.argmax(bad))
        ri = matched[qi]
        raise FsanError(
            f"line {_line(predictions[ri], ri)}: DiDeMo predictions need \"segments\": all "
            f"{len(segs)} chunk pairs [s, e] (0 <= s <= e <= {n_chunks - 1}) each once, ranked "
            "best first",
            "Write the full ranking, as `fsan evaluate --checkpoint ... --save-predictions` does",
        )
    chunks = [didemo_chunks(q) for q in queries]
    try:
        mean_rank, mean_iou = didemo_per_query(rankings, chunks, n_chunks)
    except ValueError as exc:
        raise FsanError(f"the split's DiDeMo annotations cannot be read ({exc})",
                        "Run `fsan prepare` again") from None
    missing = np.array([ri is None for ri in matched])
    mean_rank = np.where(missing, np.inf, mean_rank)
    mean_iou = np.where(missing, 0.0, mean_iou)
    return didemo_summary(mean_rank, mean_iou, p["ks"])


def _bad_rankings(rankings: np.ndarray, n_chunks: int) -> np.ndarray:
    """(Q,) True where a (Q, S, 2) ranking is not every chunk pair exactly once."""
    n_seg = n_chunks * (n_chunks + 1) // 2
    s, e = rankings[..., 0], rankings[..., 1]
    valid = ((s >= 0) & (s <= e) & (e < n_chunks)).all(axis=1)
    idx = segment_lut(n_chunks)[np.clip(s, 0, n_chunks - 1), np.clip(e, 0, n_chunks - 1)]
    complete = (np.sort(idx, axis=1) == np.arange(n_seg)).all(axis=1)
    return ~(valid & complete)


def _ranking_ok(given: Any, n_chunks: int) -> bool:
    try:
        arr = np.array(given, dtype=np.int64)
    except (TypeError, ValueError):
        return False
    n_seg = n_chunks * (n_chunks + 1) // 2
    return arr.shape == (n_seg, 2) and not _bad_rankings(arr[None], n_chunks)[0]
