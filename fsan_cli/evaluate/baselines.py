"""Baselines a model must beat, computed on the split (never copied from a paper).

Random (seeded with `seed`, numpy `default_rng`, draws in the order of the split's queries):
- moments in seconds: one array u ~ U(0, 1) of shape (queries, top_k, 2) is drawn; moment j of a
  query of duration D is start = u[j, 0] * D, end = start + u[j, 1] * (D - start), i.e.
  start ~ U(0, D), end ~ U(start, D); ranked in draw order, scores 1, 1 - 1/k, ...
- DiDeMo: each query ranks the 21 segments by argsort of U(0, 1) draws of shape (queries, 21): a
  uniformly random permutation.

Prior (chosen on the train split, then the same answer for every query):
- moments: the fixed segment in relative time [s, e] on a grid of step 0.05 (0 <= s < e <= 1)
  with the highest mean IoU against the train moments (best-matching one per query); the next
  top-k moments by the same criterion after greedy NMS at relative IoU 0.5 (a moment with IoU >= 0.5 to a kept one is
  dropped), so they differ.
  Scaled by each query's duration. On ActivityNet-Captions it is the whole video.
- DiDeMo: the moment-frequency prior of the dataset's authors: segments ranked by how often
  annotators chose them in the train annotations (ties and unseen segments in (s, e) order).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from fsan_cli.core.errors import FsanError
from fsan_cli.evaluate.metrics import (
    DIDEMO_CHUNK_SECONDS,
    DIDEMO_CHUNKS,
    IOU_EPS,
    didemo_segments,
    iou,
)
from fsan_cli.evaluate.scoring import didemo_chunks

PRIOR_GRID_STEP = 0.05
PRIOR_NMS = 0.5


def _is_didemo(queries: Sequence[Any], dataset: str | None) -> bool:
    if dataset is not None:
        return dataset == "didemo"
    return bool(queries) and "annotation_id" in queries[0].extra


def _moment_row(q: Any, moments: list[list[float]]) -> dict:
    return {"video": q.video, "query": q.query, "duration": q.duration, "moments": moments}


def _didemo_row(q: Any, ranking: Sequence[Sequence[int]], scores: Sequence[float], top_k: int):
    d, s = q.duration, DIDEMO_CHUNK_SECONDS
    moments = [
        [min(a * s, d), min((b + 1) * s, d), float(sc)]
        for (a, b), sc in zip(ranking[:top_k], scores[:top_k], strict=True)
    ]
    row = _moment_row(q, moments)
    row["annotation_id"] = q.extra.get("annotation_id")
    row["segments"] = [[int(a), int(b)] for a, b in ranking]
    return row


def random_predictions(
    queries: Sequence[Any], top_k: int = 5, seed: int = 0, dataset: str | None = None
) -> list[dict]:
    """Seeded random predictions for every query (recipe in the module docstring)."""
    rng = np.random.default_rng(seed)
    if _is_didemo(queries, dataset):
        segs = np.array(didemo_segments(DIDEMO_CHUNKS))
        order = np.argsort(rng.random((len(queries), len(segs))), axis=1)  # (Q, 21)
        scores = [round(1.0 - j / len(segs), 6) for j in range(len(segs))]
        return [_didemo_row(q, segs[o].tolist(), scores, top_k) for q, o in zip(queries, order, strict=True)]
    u = rng.random((len(queries), top_k, 2))  # (Q, k, 2)
    dur = np.array([q.duration for q in queries], dtype=np.float64)[:, None]  # (Q, 1)
    start = u[..., 0] * dur
    end = start + u[..., 1] * (dur - start)
    scores = [round(1.0 - j / top_k, 6) for j in range(top_k)]
    return [
        _moment_row(q, [[s, e, sc] for s, e, sc in zip(ss, ee, scores, strict=True)])
        for q, ss, ee in zip(queries, start.tolist(), end.tolist(), strict=True)
    ]


def relative_prior(
    train_queries: Sequence[Any],
    top_k: int = 5,
    step: float = PRIOR_GRID_STEP,
    nms: float = PRIOR_NMS,
) -> list[tuple[float, float, float]]:
    """The top-k fixed relative segments (start, end, mean train IoU), best first, after NMS."""
    grid = np.round(np.arange(0.0, 1.0 + step / 2, step), 10)
    cs, ce = np.meshgrid(grid, grid, indexing="ij")
    keep = cs < ce
    cands = np.stack([cs[keep], ce[keep]], axis=1)  # (C, 2), in (start, end) order
    rel, owner = [], []
    for qi, q in enumerate(train_queries):
        if q.duration > 0:
            for a, b in q.times:
                rel.append([a / q.duration, b / q.duration])
                owner.append(qi)
    if not rel:
        raise FsanError("the train split has no annotated moments to choose a prior from",
                        "Prepare the dataset with its train split")
    gts = np.clip(np.array(rel), 0.0, 1.0)  # (G, 2)
    owner_arr = np.array(owner)
    starts = np.flatnonzero(np.r_[True, owner_arr[1:] != owner_arr[:-1]])  # first gt of each query
    mean_iou = np.empty(len(cands))
    for c0 in range(0, len(cands), 16):  # blocks keep (16, G) in memory, not (C, G)
        block = iou(cands[c0 : c0 + 16, None, :], gts[None, :, :])  # (16, G)
        mean_iou[c0 : c0 + 16] = np.maximum.reduceat(block, starts, axis=1).mean(axis=1)
    chosen: list[int] = []
    for c in np.argsort(-mean_iou, kind="stable"):
        if all(iou(cands[c], cands[k]) < nms - IOU_EPS for k in chosen):  # suppress IoU >= nms
            chosen.append(int(c))
            if len(chosen) == top_k:
                break
    return [(float(cands[c, 0]), float(cands[c, 1]), float(mean_iou[c])) for c in chosen]


def didemo_frequency_prior(train_queries: Sequence[Any]) -> list[tuple[tuple[int, int], float]]:
    """All 21 segments ranked by how often annotators chose them on train, with their share."""
    counts = Counter(tuple(c) for q in train_queries for c in didemo_chunks(q))
    total = max(sum(counts.values()), 1)
    segs = didemo_segments(DIDEMO_CHUNKS)
    ranked = sorted(segs, key=lambda s: -counts.get(s, 0))  # stable: ties in (s, e) order
    return [(s, counts.get(s, 0) / total) for s in ranked]


def prior_predictions(
    train_queries: Sequence[Any],
    queries: Sequence[Any],
    top_k: int = 5,
    dataset: str | None = None,
) -> list[dict]:
    """The train prior answered for every query (recipe in the module docstring)."""
    if not train_queries:
        raise FsanError("the train split is empty, so there is no prior to choose",
                        "Prepare the dataset with its train split")
    if _is_didemo(queries, dataset):
        prior = didemo_frequency_prior(train_queries)
        ranking = [s for s, _ in prior]
        scores = [round(f, 6) for _, f in prior]
        return [_didemo_row(q, ranking, scores, top_k) for q in queries]
    segs = relative_prior(train_queries, top_k)
    return [
        _moment_row(q, [[s * q.duration, e * q.duration, round(m, 6)] for s, e, m in segs])
        for q in queries
    ]
