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
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from fsan_cli.core.errors import FsanError, UsageError

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


def protocol(dataset: str, thresholds: Sequence[float] | None = None) -> dict[str, Any]:
    """The dataset's protocol; `thresholds` replaces its IoU thresholds (moments in seconds only:
    DiDeMo ranks its 21 segments)."""
    if dataset not in PROTOCOLS:
        raise FsanError(f"unknown dataset '{dataset}'", f"Use one of: {', '.join(PROTOCOLS)}")
    if thresholds is None:
        return PROTOCOLS[dataset]
    if PROTOCOLS[dataset]["kind"] != "moments":
        raise UsageError(f"{dataset} is scored by Rank@k over its segments, not at IoU thresholds",
                        "Leave out --iou for this dataset")
    return {**PROTOCOLS[dataset], "thresholds": tuple(thresholds)}


def parse_thresholds(text: str) -> tuple[float, ...]:
    """IoU thresholds from "0.3,0.5,0.7": each in (0, 1], in ascending order, each once."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(0 < v <= 1 for v in values):
        raise UsageError(f"--iou '{text}' is not a list of IoU thresholds in (0, 1]",  # exit 2, as --nms 7
                        "Pass them separated by commas, e.g. --iou 0.3,0.5,0.7")
    return tuple(sorted({float(f"{v:g}") for v in values}))  # as the keys print them: 0.5 and 0.50000001 are one


def threshold_of(metric: str) -> float | None:
    """The IoU threshold a metric name such as "r@1,iou=0.7" asks for, else None."""
    head, _, tail = metric.partition(",iou=")
    if not head.startswith("r@") or not tail:
        return None
    try:
        value = float(tail)
    except ValueError:
        return None
    return value if 0 < value <= 1 else None


def asked_thresholds(dataset: str, iou: str | None, metric: str | None) -> tuple[float, ...] | None:
    """The IoU thresholds `fsan evaluate` scores at: --iou's, else the protocol's (None), with the
    threshold of a --metric such as r@1,iou=0.7 added where the protocol lacks it."""
    thresholds = parse_thresholds(iou) if iou is not None else None
    asked = threshold_of(metric) if metric is not None else None
    if asked is None or protocol(dataset)["kind"] != "moments":
        return thresholds if thresholds is None else protocol(dataset, thresholds)["thresholds"]
    current = protocol(dataset, thresholds)["thresholds"]
    return current if asked in current else tuple(sorted({*current, asked}))


def metric_keys(dataset: str, thresholds: Sequence[float] | None = None) -> list[str]:
    """The metric names of a dataset's protocol (at `thresholds` where given), in table order."""
    p = protocol(dataset, thresholds)
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
    return moment_summary(hits, top1, ks, thresholds)


def moment_summary(hits, top1, ks, thresholds) -> dict[str, float]:
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


def segment_lut(n_chunks: int) -> np.ndarray:
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
    return segment_lut(n_chunks)[c[..., 0], c[..., 1]]


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
    return didemo_summary(mean_rank, mean_iou, ks)


def didemo_summary(mean_rank, mean_iou, ks) -> dict[str, float]:
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


def top1_iou(pred: np.ndarray, gt: list[list[list[float]]]) -> np.ndarray:
    """IoU of each query's top-1 moment (Q, 2) with its best-matching ground-truth moment."""
    gts, valid = pad_ragged(gt)  # (Q, M, 2), (Q, M)
    return np.where(valid, iou(pred[:, None, :], gts), -1.0).max(1)


def mean_sd(values: Iterable[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation) of a metric over runs or seeds: the deviation divides by
    n - 1 (ddof 1), and is None for one value, which has no spread. The one place that reports
    "mean ± sd" computes it: `fsan train --seeds`, `fsan ablate` and benchmarks/quality/sizes.py."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_sd needs at least one value")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None
