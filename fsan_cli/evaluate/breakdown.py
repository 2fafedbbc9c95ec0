"""Metrics by video length (paper §4.5, Figure 4): the split's queries grouped into a few buckets
of video duration, each bucket scored by fsan_cli/evaluate/scoring.py exactly as the whole split is.

Buckets are half-open intervals [low, high) in seconds: a video of exactly 12 s falls in 12-22 s.
- ActivityNet-Captions: the paper's Figure 4. Its text names the shortest interval "2-12s, 130
  cases" and the longest ">230s, 140 cases"; 10-second intervals from 2 s reproduce those counts on
  val_2 (130 videos of 2.3-12 s; 139 of >= 232 s), so the edges are 12, 22, ..., 232 s (24 buckets).
- Other datasets: the paper shows no such figure, so the edges are the quartiles of the split's
  query durations (rounded to 0.1 s; repeated or empty ones dropped); the output says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fsan_cli.evaluate.metrics import metric_keys
from fsan_cli.evaluate.scoring import match_predictions, score

PAPER_FIGURE4_EDGES = tuple(float(e) for e in range(12, 233, 10))  # 12, 22, ..., 232 s
PAPER_FIGURE4_NOTE = (
    "Buckets: the paper's Figure 4 (§4.5), 10-second intervals from its shortest \"2-12s\" to its "
    "longest \">230s\". The paper reports mIoU 42.99 on 2-12 s (130 videos) and 34.68 on >230 s "
    "(140 videos) of val_2 (= --split test); the counts here are queries."
)
DATASET_NAMES = {"didemo": "DiDeMo", "charades": "Charades-STA"}


@dataclass(frozen=True)
class LengthBucket:
    label: str
    low: float  # seconds, inclusive
    high: float | None  # seconds, exclusive; None: open
    queries: int
    metrics: dict[str, float]  # percent, the dataset's metric_keys

    def as_json(self) -> dict[str, Any]:
        return {"bucket": self.label, "low": self.low, "high": self.high, "queries": self.queries,
                **{k: round(v, 4) for k, v in self.metrics.items()}}


@dataclass(frozen=True)
class LengthBreakdown:
    buckets: list[LengthBucket]
    source: str  # where the edges come from, said in every output

    def as_json(self) -> list[dict[str, Any]]:
        return [b.as_json() for b in self.buckets]


def length_edges(dataset: str, durations: np.ndarray) -> tuple[np.ndarray, str]:
    """The inner bucket edges in seconds (ascending) for `dataset`, and a sentence on their source."""
    if dataset == "activitynet":
        return np.array(PAPER_FIGURE4_EDGES), PAPER_FIGURE4_NOTE
    name = DATASET_NAMES.get(dataset, f"the {dataset} data")
    note = (f"Buckets: quartiles of this split's query durations (the paper gives no length "
            f"intervals for {name}).")
    if not len(durations):
        return np.zeros(0), note
    edges = np.unique(np.round(np.quantile(durations, (0.25, 0.5, 0.75)), 1))
    return edges[(edges > durations.min()) & (edges <= durations.max())], note


def _label(low: float | None, high: float | None) -> str:
    if low is None and high is None:
        return "all"
    if low is None:
        return f"< {high:g} s"
    if high is None:
        return f">= {low:g} s"
    return f"{low:g}-{high:g} s"


def matched_rows(dataset: str, queries: Sequence[Any], predictions: Sequence[dict]) -> list[dict | None]:
    """Each query's prediction row (None where it has none), matched as `score` matches them."""
    matched, _ = match_predictions(dataset, queries, predictions)
    return [None if i is None else predictions[i] for i in matched]


def by_length(dataset: str, queries: Sequence[Any], rows: Sequence[dict | None]) -> LengthBreakdown:
    """Per-bucket metrics: `rows[i]` is the prediction row of `queries[i]` (None: a miss).

    Each non-empty bucket is scored by `scoring.score` on its queries and their rows, so a
    bucket's numbers are those `fsan evaluate` would print for that subset alone.
    """
    if len(rows) != len(queries):
        raise ValueError(f"{len(rows)} rows for {len(queries)} queries")
    durations = np.fromiter((q.duration for q in queries), dtype=np.float64, count=len(queries))
    edges, source = length_edges(dataset, durations)
    which = np.searchsorted(edges, durations, side="right")  # bucket b is [edges[b-1], edges[b])
    order = np.argsort(which, kind="stable")  # keeps the split's order inside a bucket
    counts = np.bincount(which, minlength=len(edges) + 1)
    bounds = [None, *edges.tolist(), None]
    buckets = []
    for b, members in enumerate(np.split(order, np.cumsum(counts)[:-1])):
        if not len(members):
            continue
        subset = [queries[i] for i in members]
        given = [rows[i] for i in members if rows[i] is not None]
        if given:
            metrics, _ = score(dataset, subset, given)  # warnings were said for the whole split
        else:  # no prediction in the bucket: every query a miss, as score counts them
            metrics = {k: 0.0 for k in metric_keys(dataset)}
        low, high = bounds[b], bounds[b + 1]
        buckets.append(LengthBucket(_label(low, high), 0.0 if low is None else low, high,
                                    len(members), metrics))
    return LengthBreakdown(buckets, source)
