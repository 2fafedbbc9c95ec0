"""What the Predictor answers: ranked segments and their seconds, the span prior's weight that
ranked them, and the one place where an answer becomes a predictions JSONL line (DESIGN.md).

A prior-aware line names what each list is: "moments" are the answers (SC + w log p), and
"model_moments" the model's own (SC alone); "span_prior" holds the weight w and whether it
changed the top-1 answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Predictions:
    """Answers for Q queries, in the order asked."""

    segments: np.ndarray  # (Q, k, 2) clip ids, inclusive
    scores: np.ndarray  # (Q, k) SC of each (plus the weighted span prior, when it is used)
    maps: list[np.ndarray] | None  # per query (its tokens, N_v) alignment map P, when asked
    score_maps: list[np.ndarray] | None = None  # and the map SC reads (eq. 8; e.g. P centred)
    changed: np.ndarray | None = None  # (Q,) the span prior changed the top-1 answer
    plain: Predictions | None = None  # the model's own answers, without the span prior
    match: np.ndarray | None = None  # (Q,) matching score S(V, S) of eq. 7, when asked
    coverage: np.ndarray | None = None  # (Q,) models.segments.word_coverage of P, when asked


@dataclass
class Answers:
    """What `Predictor.answer` found for Q queries, and their predictions rows."""

    predictions: Predictions
    seconds: np.ndarray  # (Q, k, 2)
    ranked: bool  # every segment ranked (DiDeMo's protocol), without NMS
    nms: float | None
    plain_seconds: np.ndarray | None = None  # (Q, k, 2) the model's own, without the span prior
    prior_weight: float | None = None  # w of the span prior that ranked these answers, else None
    windows: np.ndarray | None = None  # (Q, k, 2) seconds of the window each moment came from
    # (a video longer than the trained range, fsan_cli/predict/windows.py); NaN: the whole video

    @property
    def changed_share(self) -> float | None:
        """Percent of the queries whose top-1 answer the span prior moved (None without one)."""
        changed = self.predictions.changed
        return None if changed is None or not len(changed) else 100 * float(changed.mean())

    def row(self, i: int, video: str, query: str, duration: float, top_k: int,
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Query i's predictions JSONL line; a ranked one with all its segments; `extra` fields
        (e.g. DiDeMo's annotation_id) come after the answer's own."""
        p = self.predictions
        row = row_of(video, query, duration, self.seconds[i][:top_k], p.scores[i][:top_k], self.nms)
        if self.ranked:
            row["segments"] = p.segments[i].tolist()
        if self.windows is not None and np.isfinite(self.windows[i][:top_k]).all():
            row["window"] = [float(x) for x in self.windows[i][0]]  # the window that answered
            row["windows"] = [[float(a), float(b)] for a, b in self.windows[i][:top_k]]
        row.update(extra or {})
        if self.prior_weight is not None and self.plain_seconds is not None and p.plain is not None:
            own = row_of(video, query, duration, self.plain_seconds[i][:top_k], p.plain.scores[i][:top_k], None)
            row["span_prior"] = {"weight": self.prior_weight, "changed": bool(p.changed[i])}
            row["model_moments"] = own["moments"]
        return row

    def rows(self, queries: list[Any], top_k: int) -> list[dict[str, Any]]:
        """The lines of a prepared split's queries (data.store.Query), in their order."""
        return [self.row(i, q.video, q.query, q.duration, top_k,
                         {"annotation_id": q.extra.get("annotation_id")} if self.ranked else None)
                for i, q in enumerate(queries)]


@dataclass
class Grounding:
    query: str
    tokens: list[str]  # the words the model read (truncated to max_tokens)
    unknown: list[str]  # of those, the words read as <unk>
    segments: np.ndarray  # (k, 2) clip ids, inclusive
    moments: np.ndarray  # (k, 2) seconds
    scores: np.ndarray  # (k,)
    alignment_map: np.ndarray  # (len(tokens), N_v) cosine
    score_map: np.ndarray | None = None  # the map the segment scores read (align.sc_map of P)
    sc_map: str = "p"  # which: "p", "p_hat" or "centered"
    prior_weight: float | None = None  # w of the span prior in use, else None
    prior_changed: bool = False  # the span prior moved the top-1 answer
    model_top: tuple[np.ndarray, np.ndarray, float] | None = None  # the model's own top-1 (clips, seconds, SC)
    windowed: bool = False  # a long video's: scores are its windows' word coverage (predict/windows.py)


def row_of(video: str, query: str, duration: float, seconds: np.ndarray, scores: np.ndarray,
           nms: float | None) -> dict[str, Any]:
    """One predictions JSONL line (DESIGN.md): moments best first, their times at full precision
    (a file scored again gives exactly the figures scored in memory), scores to 5 decimals."""
    moments = [[float(s), float(e), round(float(c), 5)]
               for (s, e), c in zip(seconds, scores, strict=True)]
    return {"video": video, "query": query, "duration": duration, "moments": moments, "nms": nms}


def combine(short: Answers | None, long: Answers | None, is_long: np.ndarray) -> Answers:
    """One Answers for Q queries from the short videos' (in order) and the long ones' (in order,
    read in windows: predict/windows.py), `is_long` (Q,) saying which each query is."""
    if long is None:
        return short
    if short is None:
        return long
    q = len(is_long)
    sp, lp = short.predictions, long.predictions
    k = max(sp.segments.shape[1], lp.segments.shape[1])
    segs = _stack(sp.segments, lp.segments, is_long, k, 0)
    scores = _stack(sp.scores, lp.scores, is_long, k, -np.inf)
    seconds = _stack(short.seconds, long.seconds, is_long, k, np.nan)
    changed = None
    if sp.changed is not None or lp.changed is not None:
        changed = np.zeros(q, bool)
        changed[~is_long] = sp.changed if sp.changed is not None else False
        changed[is_long] = lp.changed if lp.changed is not None else False
    plain = plain_seconds = None
    if short.plain_seconds is not None or long.plain_seconds is not None:
        own_s = sp.plain or Predictions(sp.segments, sp.scores, None)
        own_l = lp.plain or Predictions(lp.segments, lp.scores, None)
        plain = Predictions(_stack(own_s.segments, own_l.segments, is_long, k, 0),
                            _stack(own_s.scores, own_l.scores, is_long, k, -np.inf), None)
        plain_seconds = _stack(short.plain_seconds if short.plain_seconds is not None else short.seconds,
                               long.plain_seconds if long.plain_seconds is not None else long.seconds,
                               is_long, k, np.nan)
    windows = np.full((q, k, 2), np.nan)
    windows[is_long] = _fit(long.windows, (k, 2), np.nan)
    weight = short.prior_weight if short.prior_weight is not None else long.prior_weight
    maps = None
    if sp.maps is not None:
        maps = [None] * q
        for i, m in zip(np.flatnonzero(~is_long), sp.maps, strict=True):
            maps[i] = m
    predictions = Predictions(segs, scores, maps, None, changed, plain)
    return Answers(predictions, seconds, short.ranked, short.nms, plain_seconds, weight, windows)


def _fit(x: np.ndarray, shape: tuple, fill) -> np.ndarray:
    """`x` (n, k', ...) cut or padded (with `fill`) to (n, *shape)."""
    out = np.full((len(x), *shape), fill, np.result_type(x.dtype, type(fill)) if x.dtype.kind == "f" else x.dtype)
    n = min(shape[0], x.shape[1])
    out[:, :n] = x[:, :n]
    return out


def _stack(a: np.ndarray, b: np.ndarray, is_long: np.ndarray, k: int, fill) -> np.ndarray:
    out = np.full((len(is_long), k, *a.shape[2:]), fill,
                  np.result_type(a.dtype, b.dtype) if a.dtype.kind == "f" else a.dtype)
    out[~is_long] = _fit(a, (k, *a.shape[2:]), fill)
    out[is_long] = _fit(b, (k, *b.shape[2:]), fill)
    return out
