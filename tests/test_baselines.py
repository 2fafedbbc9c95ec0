"""Baselines: the documented random recipe, the train prior, and their scores on real annotations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fsan_cli.core.errors import FsanError
from fsan_cli.data.store import Query
from fsan_cli.evaluate.baselines import (
    didemo_frequency_prior,
    prior_predictions,
    random_predictions,
    relative_prior,
)
from fsan_cli.evaluate.metrics import didemo_random_expectation, didemo_segments, iou
from fsan_cli.evaluate.scoring import score

SEGS = didemo_segments()


def moment_queries(n: int = 50, seed: int = 0) -> list[Query]:
    rng = np.random.default_rng(seed)
    return [Query(f"v{i}", f"q{i}", float(rng.uniform(5, 200)), [[1.0, 2.0]]) for i in range(n)]


def didemo_query(i: int, chunks: list[list[int]], duration: float = 30.0) -> Query:
    times = [[5.0 * a, 5.0 * (b + 1)] for a, b in chunks]
    return Query(f"v{i}", f"q{i}", duration, times, {"annotation_id": i, "chunks": chunks})


def test_random_follows_the_documented_recipe():
    queries = moment_queries()
    rows = random_predictions(queries, top_k=3, seed=7)
    u = np.random.default_rng(7).random((len(queries), 3, 2))
    for q, r, uu in zip(queries, rows, u, strict=True):
        assert (r["video"], r["query"], r["duration"]) == (q.video, q.query, q.duration)
        start = uu[:, 0] * q.duration
        end = start + uu[:, 1] * (q.duration - start)
        m = np.array(r["moments"])
        assert m.shape == (3, 3)
        assert np.allclose(m[:, 0], start) and np.allclose(m[:, 1], end)
        assert (m[:, 0] >= 0).all() and (m[:, 0] <= m[:, 1]).all() and (m[:, 1] <= q.duration).all()
        assert list(m[:, 2]) == sorted(m[:, 2], reverse=True)


def test_random_is_seeded():
    queries = moment_queries()
    assert random_predictions(queries, seed=3) == random_predictions(queries, seed=3)
    assert random_predictions(queries, seed=3) != random_predictions(queries, seed=4)


def test_random_didemo_ranks_all_segments():
    queries = [didemo_query(i, [[0, 0]] * 4, duration=25.0) for i in range(20)]
    rows = random_predictions(queries, top_k=5, seed=0, dataset="didemo")
    for q, r in zip(queries, rows, strict=True):
        assert r["annotation_id"] == q.extra["annotation_id"]
        assert sorted(map(tuple, r["segments"])) == sorted(SEGS)
        assert len(r["moments"]) == 5
        for (a, b), (s, e, _) in zip(r["segments"][:5], r["moments"], strict=True):
            assert (s, e) == (min(5.0 * a, 25.0), min(5.0 * (b + 1), 25.0))
    assert len({tuple(map(tuple, r["segments"])) for r in rows}) == 20


def test_relative_prior_picks_the_train_moment_and_nms_keeps_them_apart():
    train = [Query(f"v{i}", "x", d, [[0.2 * d, 0.4 * d]]) for i, d in enumerate((10.0, 50.0, 80.0))]
    prior = relative_prior(train, top_k=5)
    assert prior[0][:2] == pytest.approx((0.2, 0.4))
    assert prior[0][2] == pytest.approx(1.0)
    assert len(prior) == 5
    segs = np.array([p[:2] for p in prior])
    pair = iou(segs[:, None, :], segs[None, :, :])
    assert (pair[~np.eye(5, dtype=bool)] < 0.5).all()
    assert [p[2] for p in prior] == sorted((p[2] for p in prior), reverse=True)


def test_prior_scales_by_duration():
    train = [Query("t", "x", 10.0, [[0.0, 10.0]])]
    rows = prior_predictions(train, [Query("v", "y", 40.0, [[0, 1]])], top_k=1)
    assert rows == [{"video": "v", "query": "y", "duration": 40.0, "moments": [[0.0, 40.0, 1.0]]}]


def test_prior_needs_train_moments():
    with pytest.raises(FsanError, match="train split is empty"):
        prior_predictions([], moment_queries(2))


def test_didemo_frequency_prior_counts_every_annotator():
    train = [didemo_query(0, [[1, 1], [1, 1], [0, 0], [2, 3]]), didemo_query(1, [[0, 0], [1, 1]])]
    prior = didemo_frequency_prior(train)
    assert [s for s, _ in prior][:4] == [(1, 1), (0, 0), (2, 3), (0, 1)]  # ties in (s, e) order
    assert prior[0][1] == pytest.approx(3 / 6)
    assert sorted(s for s, _ in prior) == sorted(SEGS)
    rows = prior_predictions(train, [didemo_query(9, [[5, 5]] * 4)], dataset="didemo")
    assert rows[0]["annotation_id"] == 9
    assert rows[0]["segments"][:2] == [[1, 1], [0, 0]]
    assert rows[0]["moments"][0] == [5.0, 10.0, 0.5]


# ------------------------------------------------------------------ on the real annotation files


def activitynet(shared_data, name: str) -> list[Query]:
    data = json.loads((shared_data / "activitynet" / name).read_text(encoding="utf-8"))
    return [
        Query(v, s, float(x["duration"]), [[float(a), float(b)]])
        for v, x in data.items()
        for s, (a, b) in zip(x["sentences"], x["timestamps"], strict=True)
    ]


def test_activitynet_prior_is_the_whole_video_and_scores_as_documented(shared_data):
    train = activitynet(shared_data, "train.json")
    test = activitynet(shared_data, "val_2.json")
    rows = prior_predictions(train, test, top_k=5, dataset="activitynet")
    assert rows[0]["moments"][0][:2] == [0.0, test[0].duration]
    got, _ = score("activitynet", test, rows)
    assert [round(got[f"r@1,iou={t}"], 1) for t in (0.1, 0.3, 0.5)] == [82.6, 48.0, 21.2]
    assert round(got["miou"], 1) == 34.6


def test_activitynet_random_matches_readme(shared_data):
    test = activitynet(shared_data, "val_2.json")
    got, _ = score("activitynet", test, random_predictions(test, seed=0))
    # README: about 38 / 21 / 10 at IoU 0.1 / 0.3 / 0.5 for this recipe
    assert [round(got[f"r@1,iou={t}"]) for t in (0.1, 0.3, 0.5)] == [38, 21, 10]


def test_didemo_random_scores_near_the_exact_expectation(shared_data):
    rows = json.loads((shared_data / "didemo" / "test_data.json").read_text(encoding="utf-8"))
    queries = [didemo_query(r["annotation_id"], r["times"]) for r in rows]
    expected = didemo_random_expectation([r["times"] for r in rows])
    runs = [score("didemo", queries, random_predictions(queries, seed=s, dataset="didemo"))[0]
            for s in range(3)]
    for key, tol in (("rank@1", 0.6), ("rank@5", 1.0), ("miou", 0.5)):
        assert np.mean([r[key] for r in runs]) == pytest.approx(expected[key], abs=tol)
