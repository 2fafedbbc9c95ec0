"""Choosing the epoch without times: the held-out val sentences of sentence-only data, each
scored against its own video and a few other val videos by the matching score S(V, S) of eq. 7,
the quantity L^t trains. The share whose own video scores highest measures what the model was
trained to do (tell a sentence's video from another's); it needs no times, and it claims
nothing about where in the video the sentence happens.

The candidates are drawn once, with a fixed seed, so every epoch is scored on the same pairs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fsan_cli.data.store import Query, Store, video_rows

OTHERS = 4  # other val videos per sentence: chance is 1 / (OTHERS + 1) where val has that many
MAX_SENTENCES = 1000  # at most this many val sentences (a fixed sample): OTHERS + 1 passes each


def sentences_to_match(store: Store) -> list[Query]:
    """The val sentences that choose the epoch when val has no times: all of them (a fixed
    sample of MAX_SENTENCES at most), where they come from two videos or more; else none."""
    val = [q for q in store.splits.get("val") or [] if not q.times]
    if len({q.video for q in val}) < 2:
        return []
    if len(val) > MAX_SENTENCES:
        keep = np.sort(np.random.default_rng(0).permutation(len(val))[:MAX_SENTENCES])
        val = [val[i] for i in keep]
    video_rows(store, val)  # their videos and durations checked before the first step
    return val


def candidates(rows: np.ndarray, others: int = OTHERS, seed: int = 0) -> np.ndarray:
    """(Q, C) feature rows each sentence is scored against: column 0 its own video's, then up to
    `others` other videos among `rows`' distinct ones, drawn with `seed`."""
    videos = np.unique(rows)  # (V,)
    c = min(others, len(videos) - 1)
    keys = np.random.default_rng(seed).random((len(rows), len(videos)))  # (Q, V)
    keys[videos[None, :] == rows[:, None]] = np.inf  # its own video sorts last, never drawn
    drawn = np.argsort(keys, axis=1, kind="stable")[:, :c]  # (Q, c)
    return np.concatenate([rows[:, None], videos[drawn]], axis=1)


def matching_accuracy(scores: np.ndarray) -> float:
    """Percent of rows of (Q, C) matching scores whose column 0 (the own video) is strictly the
    highest: a tie is a miss."""
    if scores.shape[1] < 2:
        return 0.0
    return float(100 * (scores[:, 0] > scores[:, 1:].max(1)).mean())


def validate_matching(predictor: Any, features: Any, store: Store, queries: list[Query]) -> dict[str, float]:
    """val_match (percent of the sentences whose own video the model scores highest among C) and
    val_match_chance (100 / C), by the Predictor that `fsan ground` uses, without a span prior."""
    rows = candidates(video_rows(store, queries))  # (Q, C)
    q, c = rows.shape
    ids = predictor.encode([x.query for x in queries])  # (Q, Ns)
    pairs = np.repeat(np.arange(q), c)  # each sentence once per candidate, row-major
    out = predictor.predict(features, rows.reshape(-1), ids[pairs], 1, match=True)
    return {"val_match": matching_accuracy(out.match.reshape(q, c)), "val_match_chance": 100.0 / c}
