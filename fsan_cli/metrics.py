"""Evaluation metrics: pure functions over predictions and ground truth (numpy only, no torch).

Protocols (paper §4.1):
- ActivityNet-Captions (and synthetic, custom): R@k at IoU thresholds {0.1, 0.3, 0.5}, k in {1, 5},
  and mIoU of the top-1 moment. IoU in seconds; a hit is IoU >= threshold (with a 1e-9 tolerance
  for float rounding, so a moment at exactly the threshold counts). With several ground-truth
  moments per query a hit on any counts, and mIoU uses the best-matching one.
- Charades-STA: the same at IoU {0.3, 0.5, 0.7}.
- DiDeMo: the official protocol of its authors (LocalizingMoments `eval.py`): each query ranks all
  21 segments (chunk pairs s <= e of the six 5-second chunks). Take the rank of every annotator's
  moment (duplicates included), keep the 3 best and average them; Rank@k is the share of queries
  whose average is <= k. Take the IoU of the top-1 segment with every annotator's moment in chunk
  units with inclusive ends, keep the 3 best and average them; mIoU is the mean of those averages.

Moments are ranked by their order in the list (best first); scores are never re-sorted, and
evaluate applies no NMS of its own.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from fsan_cli.errors import FsanError

IOU_EPS = 1e-9  # IoU >= t - IOU_EPS counts as a hit: float rounding never drops an exact tie
DIDEMO_CHUNKS = 6
DIDEMO_CHUNK_SECONDS = 5.0

_ANET = {"kind": "moments", "ks": (1, 5), "thresholds": (0.1, 0.3, 0.5)}
PROTOCOLS: dict[str, dict[str, Any]] = {
    "activitynet": dict(_ANET),
    "charades": {"kind": "moments", "ks": (1, 5), "thresholds": (0.3, 0.5, 0.7)},
    "didemo": {
        "kind": "didemo",
        "ks": (1, 5),
        "chunks": DIDEMO_CHUNKS,
        "chunk_seconds": DIDEMO_CHUNK_SECONDS,
        "best_of": 3,
    },
    "synthetic": dict(_ANET),
    "custom": dict(_ANET),
}


def recall_key(k: int, threshold: float) -> str:
    return f"r@{k},iou={threshold:g}"


def protocol(dataset: str) -> dict[str, Any]:
    if dataset not in PROTOCOLS:
        raise FsanError(f"unknown dataset '{dataset}'", f"Use one of: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[dataset]


def metric_keys(dataset: str) -> list[str]:
    """The metric names of a dataset's protocol, in table order."""
    p = protocol(dataset)
    if p["kind"] == "didemo":
        return [f"rank@{k}" for k in p["ks"]] + ["miou"]
    return [recall_key(k, t) for k in p["ks"] for t in p["thresholds"]] + ["miou"]


# ---------------------------------------------------------------------------------------------
# moments in seconds (ActivityNet-Captions, Charades-STA, synthetic, custom)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise temporal IoU of (..., 2) arrays of (start, end) seconds (broadcasting).

    An empty union (two zero-length moments at one point) has IoU 0.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    inter = np.clip(np.minimum(a[..., 1], b[..., 1]) - np.maximum(a[..., 0], b[..., 0]), 0.0, None)
    union = np.maximum(a[..., 1], b[..., 1]) - np.minimum(a[..., 0], b[..., 0])
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def pad_ragged(arrays: Sequence[Any], width: int = 2, limit: int | None = None):
    """Stack ragged (n_i, >=width) arrays into (Q, N, width) float64 plus a (Q, N) validity mask.

    `limit` keeps only the first `limit` rows of each (one `np.asarray` per item, the rest
    vectorised).
    """
    items = [np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1] if np.size(x) else width)
             for x in arrays]
    lengths = np.array([len(x) for x in items], dtype=np.int64)
    if limit is not None:
        lengths = np.minimum(lengths, limit)
    n = int(lengths.max()) if len(items) else 0
    out = np.zeros((len(items), n, width))
    mask = np.arange(n)[None, :] < lengths[:, None]
    if n:
        flat = np.concatenate([x[:m, :width] for x, m in zip(items, lengths, strict=True)])
        out[mask] = flat
    return out, mask


def moment_hits(
    pred_moments: Sequence[Any],
    gt_moments: Sequence[Any],
    ks: Sequence[int] = (1, 5),
    thresholds: Sequence[float] = (0.1, 0.3, 0.5),
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: hits (Q, len(ks), len(thresholds)) bool and the top-1 IoU (Q,) with its best gt."""
    if len(pred_moments) != len(gt_moments):
        raise ValueError(f"{len(pred_moments)} predictions for {len(gt_moments)} queries")
    pred, pmask = pad_ragged(pred_moments, limit=max(ks))  # (Q, K, 2)
    gt, gmask = pad_ragged(gt_moments)  # (Q, M, 2)
    return padded_hits(pred, pmask, gt, gmask, ks, thresholds)


def padded_hits(pred, pmask, gt, gmask, ks, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """`moment_hits` on padded arrays: pred (Q, K, 2) ranked, gt (Q, M, 2), masks (Q, K), (Q, M)."""
    q = len(pred)
    if pred.shape[1] == 0 or gt.shape[1] == 0:
        return np.zeros((q, len(ks), len(thresholds)), bool), np.zeros(q)
    ious = iou(pred[:, :, None, :], gt[:, None, :, :])  # (Q, K, M)
    ious = np.where(pmask[:, :, None] & gmask[:, None, :], ious, -1.0)
    best = ious.max(axis=2)  # (Q, K): each ranked moment against its best-matching gt
    best_prefix = np.maximum.accumulate(best, axis=1)  # (Q, K): best over the first j+1
    cols = np.minimum(np.asarray(ks), best.shape[1]) - 1
    at_k = best_prefix[:, cols]  # (Q, len(ks))
    hits = at_k[:, :, None] >= np.asarray(thresholds)[None, None, :] - IOU_EPS
    return hits, np.clip(best[:, 0], 0.0, None)


def moment_metrics(
    pred_moments: Sequence[Any],
    gt_moments: Sequence[Any],
    ks: Sequence[int] = (1, 5),
    thresholds: Sequence[float] = (0.1, 0.3, 0.5),
) -> dict[str, float]:
    """R@k at each IoU threshold and mIoU of the top-1 moment, in percent.

    `pred_moments[i]` is (k_i, 2 or 3) ranked best first (a score column is ignored; k_i may be 0,
    a miss); `gt_moments[i]` is (m_i, 2): a hit on any gt counts, mIoU uses the best-matching gt.
    """
    hits, top1 = moment_hits(pred_moments, gt_moments, ks, thresholds)
    return _moment_summary(hits, top1, ks, thresholds)


def _moment_summary(hits, top1, ks, thresholds) -> dict[str, float]:
    out = {}
    for i, k in enumerate(ks):
        for j, t in enumerate(thresholds):
            out[recall_key(k, t)] = 100.0 * float(hits[:, i, j].mean()) if len(hits) else 0.0
    out["miou"] = 100.0 * float(top1.mean()) if len(top1) else 0.0
    return out


# ---------------------------------------------------------------------------------------------
# DiDeMo (chunk pairs, inclusive ends)


def didemo_segments(n_chunks: int = DIDEMO_CHUNKS) -> list[tuple[int, int]]:
    """All (s, e) chunk pairs with 0 <= s <= e < n_chunks: the 21 DiDeMo candidates for 6 chunks."""
    return [(s, e) for s in range(n_chunks) for e in range(s, n_chunks)]


def _segment_lut(n_chunks: int) -> np.ndarray:
    lut = np.full((n_chunks, n_chunks), -1, dtype=np.int64)
    for i, (s, e) in enumerate(didemo_segments(n_chunks)):
        lut[s, e] = i
    return lut


def segment_index(chunks: Any, n_chunks: int = DIDEMO_CHUNKS) -> np.ndarray:
    """Index into `didemo_segments(n_chunks)` of (..., 2) chunk pairs; ValueError if one is invalid."""
    c = np.asarray(chunks, dtype=np.int64)
    ok = (c[..., 0] >= 0) & (c[..., 0] <= c[..., 1]) & (c[..., 1] < n_chunks)
    if not ok.all():
        bad = c[~ok][0].tolist()
        raise ValueError(f"chunk pair {bad} is not 0 <= s <= e <= {n_chunks - 1}")
    return _segment_lut(n_chunks)[c[..., 0], c[..., 1]]


def chunk_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (..., 2) chunk pairs with inclusive ends, as the DiDeMo authors compute it."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    inter = np.clip(np.minimum(a[..., 1], b[..., 1]) + 1 - np.maximum(a[..., 0], b[..., 0]), 0, None)
    union = np.maximum(a[..., 1], b[..., 1]) + 1 - np.minimum(a[..., 0], b[..., 0])
    return inter / union


def _best3_mean(values: np.ndarray, mask: np.ndarray, largest: bool, best_of: int = 3) -> np.ndarray:
    """Mean of the `best_of` best valid values per row (fewer when a row has fewer)."""
    fill = -np.inf if largest else np.inf
    v = np.where(mask, values, fill)
    v = -np.sort(-v, axis=1) if largest else np.sort(v, axis=1)
    keep = v[:, :best_of]
    valid = np.isfinite(keep)
    n = valid.sum(axis=1)
    return np.where(n > 0, np.where(valid, keep, 0).sum(axis=1) / np.maximum(n, 1), fill)


def didemo_per_query(
    segment_rankings: Any, annotator_chunks: Sequence[Any], n_chunks: int = DIDEMO_CHUNKS
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the mean of the 3 best annotator ranks (1-based) and of the 3 best top-1 IoUs.

    `segment_rankings` is (Q, S, 2): every query ranks all S = n(n+1)/2 chunk pairs, best first.
    """
    ranking = np.asarray(segment_rankings, dtype=np.int64)
    n_seg = n_chunks * (n_chunks + 1) // 2
    if ranking.ndim != 3 or ranking.shape[1:] != (n_seg, 2):
        raise ValueError(f"segment rankings must be (queries, {n_seg}, 2), got {ranking.shape}")
    order = segment_index(ranking, n_chunks)  # (Q, S) segment ids, best first
    if not (np.sort(order, axis=1) == np.arange(n_seg)).all():
        raise ValueError(f"each ranking must list all {n_seg} chunk pairs exactly once")
    position = np.zeros_like(order)
    np.put_along_axis(position, order, np.arange(1, n_seg + 1)[None, :], axis=1)  # (Q, S) 1-based
    ann, amask = pad_ragged(annotator_chunks)  # (Q, M, 2)
    ann = ann.astype(np.int64)
    ann_idx = np.where(amask, segment_index(np.where(amask[..., None], ann, 0), n_chunks), 0)
    ranks = np.take_along_axis(position, ann_idx, axis=1).astype(np.float64)  # (Q, M)
    mean_rank = _best3_mean(ranks, amask, largest=False)
    ious = chunk_iou(ranking[:, None, 0, :], ann)  # (Q, M): top-1 against each annotator
    mean_iou = _best3_mean(ious, amask, largest=True)
    return mean_rank, np.where(np.isfinite(mean_iou), mean_iou, 0.0)


def didemo_metrics(
    segment_rankings: Any,
    annotator_chunks: Sequence[Any],
    ks: Sequence[int] = (1, 5),
    n_chunks: int = DIDEMO_CHUNKS,
) -> dict[str, float]:
    """Rank@k and mIoU (percent) under the official DiDeMo protocol (see the module docstring)."""
    mean_rank, mean_iou = didemo_per_query(segment_rankings, annotator_chunks, n_chunks)
    return _didemo_summary(mean_rank, mean_iou, ks)


def _didemo_summary(mean_rank, mean_iou, ks) -> dict[str, float]:
    out = {f"rank@{k}": 100.0 * float((mean_rank <= k).mean()) if len(mean_rank) else 0.0 for k in ks}
    out["miou"] = 100.0 * float(mean_iou.mean()) if len(mean_iou) else 0.0
    return out


def didemo_random_expectation(
    annotator_chunks: Sequence[Any], ks: Sequence[int] = (1, 5), n_chunks: int = DIDEMO_CHUNKS
) -> dict[str, float]:
    """Exact expected Rank@k and mIoU (percent) of a uniformly random ranking of all segments.

    The top-1 segment is uniform, so mIoU averages over all segments. For Rank@k only the
    multiplicities of the distinct annotated segments matter: their positions are a uniform
    random subset (the smallest r positions q1 < .. < qr of a d-subset of 1..S occur in
    C(S - qr, d - r) of the C(S, d) subsets) in a uniform random order, and the 3 best annotator
    ranks come from the first (at most) 3 of them.
    """
    segs = np.array(didemo_segments(n_chunks))
    n_seg = len(segs)
    out: dict[str, float] = {}
    ann, amask = pad_ragged(annotator_chunks)
    ious = chunk_iou(segs[None, :, None, :], ann[:, None, :, :])  # (Q, S, M)
    q, m = amask.shape
    per_top1 = _best3_mean(ious.reshape(q * n_seg, m), np.repeat(amask, n_seg, axis=0), True)
    out["miou"] = 100.0 * float(per_top1.reshape(q, n_seg).mean()) if q else 0.0
    patterns = Counter(
        tuple(sorted(Counter(map(tuple, np.asarray(a, dtype=np.int64).tolist())).values()))
        for a in annotator_chunks
    )
    prob = {k: 0.0 for k in ks}
    for mults, count in patterns.items():
        for k, p in _pattern_rank_probability(mults, ks, n_seg).items():
            prob[k] += count * p
    ranks = {f"rank@{k}": 100.0 * prob[k] / max(len(annotator_chunks), 1) for k in ks}
    return {**ranks, "miou": out["miou"]}


def _pattern_rank_probability(mults: tuple[int, ...], ks: Sequence[int], n_seg: int) -> dict:
    d = len(mults)
    r = min(d, 3)
    total = math.comb(n_seg, d)
    mass: dict[int, float] = defaultdict(float)
    prefixes = list(itertools.permutations(mults, r))  # each ordered prefix equally likely
    for qs in itertools.combinations(range(1, n_seg + 1), r):
        weight = math.comb(n_seg - qs[-1], d - r) / total
        if weight == 0:
            continue
        for prefix in prefixes:
            ranks = [p for p, mult in zip(qs, prefix, strict=True) for _ in range(mult)][:3]
            mean = sum(ranks) / len(ranks)
            for k in ks:
                if mean <= k:
                    mass[k] += weight / len(prefixes)
    return {k: mass[k] for k in ks}


# ---------------------------------------------------------------------------------------------
# matching predictions to queries


def _query_key(dataset: str, q: Any) -> Any:
    if dataset == "didemo" and "annotation_id" in q.extra:
        return ("id", str(q.extra["annotation_id"]))
    return (q.video, q.query)


def _row_key(dataset: str, row: dict) -> Any:
    if dataset == "didemo" and "annotation_id" in row:
        return ("id", str(row["annotation_id"]))
    return (row.get("video"), row.get("query"))


def _line(row: dict, i: int) -> int:
    return int(getattr(row, "line", i + 1))


def match_predictions(
    dataset: str, queries: Sequence[Any], predictions: Sequence[dict]
) -> tuple[list[int | None], list[str]]:
    """For each query, the index of its prediction row (None when missing), and warnings.

    DiDeMo rows match by annotation_id; others by (video, query), repeated pairs in order.
    """
    slots: dict[Any, list[int]] = defaultdict(list)
    for qi, q in enumerate(queries):
        slots[_query_key(dataset, q)].append(qi)
    videos = {q.video for q in queries}
    taken: dict[Any, int] = defaultdict(int)
    matched: list[int | None] = [None] * len(queries)
    unknown_video: list[int] = []
    unknown_query: list[int] = []
    extra: list[int] = []
    for ri, row in enumerate(predictions):
        key = _row_key(dataset, row)
        if key not in slots:
            (unknown_query if row.get("video") in videos else unknown_video).append(ri)
        elif taken[key] >= len(slots[key]):
            extra.append(ri)
        else:
            matched[slots[key][taken[key]]] = ri
            taken[key] += 1
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
    dataset: str, queries: Sequence[Any], predictions: Sequence[dict]
) -> tuple[dict[str, float], list[str]]:
    """Score prediction rows against a split's queries under the dataset's protocol.

    Returns (metrics in percent, warnings). Queries without a prediction count as misses; rows
    for unknown videos or queries are ignored with a count. Raises FsanError when nothing can be
    scored, or on rows the protocol cannot read (with the line number).
    """
    metrics, warnings, _ = score_details(dataset, queries, predictions)
    return metrics, warnings


def score_details(
    dataset: str, queries: Sequence[Any], predictions: Sequence[dict]
) -> tuple[dict[str, float], list[str], int]:
    """`score`, plus how many queries had a prediction."""
    p = protocol(dataset)
    check_annotated(dataset, queries)
    matched, warnings = match_predictions(dataset, queries, predictions)
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
    return _moment_summary(hits, top1, p["ks"], p["thresholds"])


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
    return _didemo_summary(mean_rank, mean_iou, p["ks"])


def _bad_rankings(rankings: np.ndarray, n_chunks: int) -> np.ndarray:
    """(Q,) True where a (Q, S, 2) ranking is not every chunk pair exactly once."""
    n_seg = n_chunks * (n_chunks + 1) // 2
    s, e = rankings[..., 0], rankings[..., 1]
    valid = ((s >= 0) & (s <= e) & (e < n_chunks)).all(axis=1)
    idx = _segment_lut(n_chunks)[np.clip(s, 0, n_chunks - 1), np.clip(e, 0, n_chunks - 1)]
    complete = (np.sort(idx, axis=1) == np.arange(n_seg)).all(axis=1)
    return ~(valid & complete)


def _ranking_ok(given: Any, n_chunks: int) -> bool:
    try:
        arr = np.array(given, dtype=np.int64)
    except (TypeError, ValueError):
        return False
    n_seg = n_chunks * (n_chunks + 1) // 2
    return arr.shape == (n_seg, 2) and not _bad_rankings(arr[None], n_chunks)[0]


def top1_iou(pred: np.ndarray, gt: list[list[list[float]]]) -> np.ndarray:
    """IoU of each query's top-1 moment (Q, 2) with its best-matching ground-truth moment."""
    gts, valid = pad_ragged(gt)  # (Q, M, 2), (Q, M)
    return np.where(valid, iou(pred[:, None, :], gts), -1.0).max(1)
