"""Metrics: hand-worked cases, plain-loop references on random inputs, golden values on real files."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pytest

from fsan_cli.core.errors import FsanError
from fsan_cli.data.store import Query
from fsan_cli.evaluate.metrics import (
    PROTOCOLS,
    chunk_iou,
    didemo_metrics,
    didemo_random_expectation,
    didemo_segments,
    iou,
    mean_sd,
    metric_keys,
    moment_metrics,
)
from fsan_cli.evaluate.predictions import PredictionRow
from fsan_cli.evaluate.scoring import score

# ------------------------------------------------------------------ plain-loop references


def ref_iou(a, b) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def ref_moment_metrics(preds, gts, ks, thresholds) -> dict[str, float]:
    out = {}
    for k in ks:
        for t in thresholds:
            hits = 0
            for p, g in zip(preds, gts, strict=True):
                best = max((ref_iou(m, x) for m in p[:k] for x in g), default=0.0)
                hits += best >= t - 1e-9
            out[f"r@{k},iou={t:g}"] = 100.0 * hits / len(preds)
    top1 = [max(ref_iou(p[0], x) for x in g) if len(p) else 0.0 for p, g in zip(preds, gts, strict=True)]
    out["miou"] = 100.0 * sum(top1) / len(top1)
    return out


def official_didemo(segments, data) -> dict[str, float]:
    """The DiDeMo authors' eval (LocalizingMoments utils/eval.py), in Python 3."""

    def c_iou(pred, gt):
        inter = max(0, min(pred[1], gt[1]) + 1 - max(pred[0], gt[0]))
        union = max(pred[1], gt[1]) + 1 - min(pred[0], gt[0])
        return float(inter) / union

    average_ranks, average_iou = [], []
    for s, times in zip(segments, data, strict=True):
        ious = [c_iou(s[0], t) for t in times]
        average_iou.append(np.mean(np.sort(ious)[-3:]))
        ranks = [s.index(tuple(t)) + 1 for t in times]
        average_ranks.append(np.mean(np.sort(ranks)[:3]))
    return {
        "rank@1": 100.0 * np.mean(np.array(average_ranks) <= 1),
        "rank@5": 100.0 * np.mean(np.array(average_ranks) <= 5),
        "miou": 100.0 * np.mean(average_iou),
    }


# ------------------------------------------------------------------ IoU


def test_iou_hand_cases():
    a = np.array([[0, 10], [0, 10], [0, 10], [3, 3], [0, 5]])
    b = np.array([[5, 15], [10, 20], [0, 10], [3, 3], [1, 2]])
    assert iou(a, b).tolist() == pytest.approx([5 / 15, 0.0, 1.0, 0.0, 0.2])


def test_iou_broadcasts_and_is_symmetric():
    rng = np.random.default_rng(1)
    a = np.sort(rng.random((7, 1, 2)) * 10, axis=-1)
    b = np.sort(rng.random((1, 5, 2)) * 10, axis=-1)
    m = iou(a, b)
    assert m.shape == (7, 5)
    assert np.allclose(m, iou(b, a))
    assert np.allclose(m, [[ref_iou(x[0], y) for y in b[0]] for x in a])


def test_chunk_iou_uses_inclusive_ends():
    assert chunk_iou([0, 1], [1, 2]) == pytest.approx(1 / 3)
    assert chunk_iou([4, 4], [4, 4]) == 1.0
    assert chunk_iou([0, 0], [5, 5]) == 0.0
    assert chunk_iou([0, 5], [2, 3]) == pytest.approx(2 / 6)


# ------------------------------------------------------------------ moments in seconds


def test_moment_metrics_hand_worked():
    preds = [
        [[0, 5, 0.9]],  # IoU 1
        [[0, 10, 0.9], [5, 10, 0.5]],  # top-1 IoU 0.5 exactly (counts at 0.5), R@5 IoU 1
        [[0, 6, 0.9]],  # IoU 0.3 exactly against [0, 20]
        [[0, 2, 0.9], [12, 14, 0.1], [10, 15, 0.5]],  # miss at top-1, 3rd moment IoU 0.5
        [],  # no moments: a miss
    ]
    gts = [[[0, 5]], [[5, 10]], [[0, 20]], [[10, 20]], [[0, 1]]]
    got = moment_metrics(preds, gts)
    assert got == pytest.approx({
        "r@1,iou=0.1": 60.0, "r@1,iou=0.3": 60.0, "r@1,iou=0.5": 40.0,
        "r@5,iou=0.1": 80.0, "r@5,iou=0.3": 80.0, "r@5,iou=0.5": 60.0,
        "miou": 100 * (1 + 0.5 + 0.3 + 0 + 0) / 5,
    })
    assert list(got) == metric_keys("activitynet")


def test_moment_metrics_several_gt_moments():
    # a query annotated twice: a hit on either counts; mIoU takes the best-matching one
    preds = [[[10, 20]], [[0, 4]]]
    gts = [[[0, 5], [10, 19]], [[0, 8], [0, 5]]]
    got = moment_metrics(preds, gts, ks=(1,), thresholds=(0.5, 0.9))
    assert got == pytest.approx({"r@1,iou=0.5": 100.0, "r@1,iou=0.9": 50.0, "miou": 100 * (0.9 + 0.8) / 2})


def test_iou_exactly_at_threshold_counts_despite_float_rounding():
    # [0.2, 0.7] in [0, 1] is IoU 0.5, but computes as 0.49999999999999994
    assert iou([0.2, 0.7], [0, 1]) < 0.5
    got = moment_metrics([[[0.2, 0.7]]], [[[0, 1]]], ks=(1,), thresholds=(0.5,))
    assert got["r@1,iou=0.5"] == 100.0


def test_moment_metrics_rank_order_not_score_order():
    # moments are ranked by position (DESIGN.md: ranked best first); scores are not re-sorted
    got = moment_metrics([[[0, 1, 0.1], [0, 10, 0.9]]], [[[0, 10]]], ks=(1,), thresholds=(0.5,))
    assert got["r@1,iou=0.5"] == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_moment_metrics_match_plain_loop(seed):
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for _ in range(60):
        d = rng.uniform(5, 100)
        p = np.sort(rng.uniform(0, d, (rng.integers(0, 8), 2)), axis=1)
        # snap some moments to a coarse grid so exact threshold ties occur
        p[: len(p) // 2] = np.round(p[: len(p) // 2] / d * 10) * d / 10
        g = np.sort(rng.uniform(0, d, (rng.integers(1, 4), 2)), axis=1)
        preds.append(p.tolist())
        gts.append(g.tolist())
    ks, ths = (1, 3, 5), (0.1, 0.3, 0.5, 0.7)
    assert moment_metrics(preds, gts, ks, ths) == pytest.approx(ref_moment_metrics(preds, gts, ks, ths))


def test_protocols():
    assert PROTOCOLS["charades"]["thresholds"] == (0.3, 0.5, 0.7)
    for name in ("activitynet", "synthetic", "custom"):
        assert PROTOCOLS[name]["thresholds"] == (0.1, 0.3, 0.5)
        assert PROTOCOLS[name]["ks"] == (1, 5)
    assert metric_keys("didemo") == ["rank@1", "rank@5", "miou"]
    assert metric_keys("charades")[:3] == ["r@1,iou=0.3", "r@1,iou=0.5", "r@1,iou=0.7"]


# ------------------------------------------------------------------ DiDeMo


SEGS = didemo_segments()


def ranking_with(first: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return list(first) + [s for s in SEGS if s not in first]


def test_didemo_duplicate_annotator_moments():
    # 3 of 4 annotators chose (4, 4): ranked first, the 3 best ranks are 1, 1, 1
    times = [[4, 4], [4, 4], [0, 0], [4, 4]]
    got = didemo_metrics([ranking_with([(4, 4)])], [times])
    assert got == pytest.approx({"rank@1": 100.0, "rank@5": 100.0, "miou": 100.0})
    # (0, 0) first: ranks 1 and three times 2 -> best 3 = 1, 2, 2 -> mean 5/3
    got = didemo_metrics([ranking_with([(0, 0), (4, 4)])], [times])
    assert got == pytest.approx({"rank@1": 0.0, "rank@5": 100.0, "miou": 100 / 3})


def test_didemo_mean_rank_ties_at_k_count():
    # distinct annotators at ranks 4, 5, 6 (and 21): mean of the best 3 is exactly 5 -> Rank@5
    order = [(0, 1), (0, 2), (0, 3), (1, 1), (2, 2), (3, 3)]
    times = [[1, 1], [2, 2], [3, 3], [list(s) for s in SEGS if s not in order][-1]]
    assert didemo_metrics([ranking_with(order)], [times])["rank@5"] == 100.0
    # ranks 4, 5, 7: mean 16/3 > 5
    order2 = [(0, 1), (0, 2), (0, 3), (1, 1), (2, 2), (4, 4), (3, 3)]
    assert didemo_metrics([ranking_with(order2)], [times])["rank@5"] == 0.0


def test_didemo_iou_keeps_three_best():
    # top-1 (0, 1) against (0, 1), (0, 0), (1, 2), (5, 5): IoUs 1, 1/2, 1/3, 0 -> mean of 3 best
    times = [[0, 1], [0, 0], [1, 2], [5, 5]]
    got = didemo_metrics([ranking_with([(0, 1)])], [times])
    assert got["miou"] == pytest.approx(100 * (1 + 1 / 2 + 1 / 3) / 3)


@pytest.mark.parametrize("seed", range(3))
def test_didemo_matches_official_code(seed):
    rng = np.random.default_rng(seed)
    rankings, data = [], []
    for _ in range(200):
        rankings.append([SEGS[i] for i in rng.permutation(len(SEGS))])
        pool = [SEGS[i] for i in rng.choice(len(SEGS), 3, replace=False)]  # duplicates likely
        data.append([list(pool[i]) for i in rng.integers(0, 3, rng.integers(4, 8))])
    assert didemo_metrics(rankings, data) == pytest.approx(official_didemo(rankings, data))


def test_didemo_rejects_incomplete_ranking():
    with pytest.raises(ValueError, match="all 21"):
        didemo_metrics([SEGS[:20] + SEGS[:1]], [[[0, 0]]])


def test_random_expectation_equals_enumeration():
    # 3 chunks -> 6 segments -> all 720 rankings enumerated
    rng = np.random.default_rng(0)
    segs = didemo_segments(3)
    data = [[list(segs[i]) for i in rng.integers(0, 6, rng.integers(3, 6))] for _ in range(6)]
    data.append([[0, 0], [0, 0], [0, 0], [0, 0]])  # one distinct moment
    perms = list(itertools.permutations(segs))
    rankings = [list(p) for p in perms for _ in data]
    ann = [d for _ in perms for d in data]
    brute = didemo_metrics(rankings, ann, ks=(1, 2, 3), n_chunks=3)
    exact = didemo_random_expectation(data, ks=(1, 2, 3), n_chunks=3)
    assert exact == pytest.approx(brute)


# ------------------------------------------------------------------ golden values on real files


def didemo_times(shared_data, split: str) -> list[list[list[int]]]:
    rows = json.loads((shared_data / "didemo" / f"{split}_data.json").read_text(encoding="utf-8"))
    return [r["times"] for r in rows]


def test_didemo_test_random_expectation_golden(shared_data):
    times = didemo_times(shared_data, "test")
    got = didemo_random_expectation(times)
    assert round(got["rank@1"], 2) == 3.56
    assert round(got["rank@5"], 1) == 22.4
    assert round(got["miou"], 2) == 22.63
    # Rank@1 needs >= 3 annotators on the top segment: expectation = mean share of such segments
    closed = np.mean([sum(c >= 3 for c in Counter(map(tuple, t)).values()) / 21 for t in times])
    assert got["rank@1"] == pytest.approx(100 * closed)


def test_didemo_test_perfect_predictions_reach_ceiling(shared_data):
    times = didemo_times(shared_data, "test")
    oracle = []
    for t in times:
        count = Counter(map(tuple, t))
        oracle.append(sorted(SEGS, key=lambda s: -count.get(s, 0)))
    got = didemo_metrics(oracle, times)
    assert round(got["rank@1"], 2) == 74.76
    assert got["rank@5"] == 100.0


def activitynet_queries(shared_data, name: str) -> list[Query]:
    data = json.loads((shared_data / "activitynet" / name).read_text(encoding="utf-8"))
    return [
        Query(v, s, float(x["duration"]), [[float(a), float(b)]])
        for v, x in data.items()
        for s, (a, b) in zip(x["sentences"], x["timestamps"], strict=True)
    ]


def test_activitynet_val2_whole_video_golden(shared_data):
    queries = activitynet_queries(shared_data, "val_2.json")
    assert len(queries) == 17031
    rows = [{"video": q.video, "query": q.query, "moments": [[0.0, q.duration]]} for q in queries]
    got, warnings = score("activitynet", queries, rows)
    assert warnings == ["17031 predicted queries have fewer than 5 moments; R@5 counts only the moments given"]
    assert [round(got[f"r@1,iou={t}"], 1) for t in (0.1, 0.3, 0.5)] == [82.6, 48.0, 21.2]
    assert round(got["miou"], 1) == 34.6


# ------------------------------------------------------------------ score(): matching and bad input


def q(video, text, duration, times, **extra) -> Query:
    return Query(video, text, duration, times, extra)


def row(video, text, moments, line=None, **extra):
    r = PredictionRow({"video": video, "query": text, "moments": moments, **extra})
    if line is not None:
        r.line = line
    return r


QUERIES = [
    q("v1", "a", 10.0, [[0, 5]]),
    q("v1", "b", 10.0, [[5, 10]]),
    q("v2", "c", 20.0, [[0, 20]]),
    q("v2", "c", 20.0, [[10, 20]]),  # the same sentence twice in one video
]


def test_score_repeated_queries_match_in_order():
    rows = [row("v2", "c", [[0, 20]]), row("v2", "c", [[10, 20]]), row("v1", "a", [[0, 5]]),
            row("v1", "b", [[5, 10]])]
    got, warnings = score("synthetic", QUERIES, rows)
    assert got["r@1,iou=0.5"] == 100.0
    assert got["miou"] == pytest.approx(100.0)
    swapped = [rows[1], rows[0], rows[2], rows[3]]
    assert score("synthetic", QUERIES, swapped)[0]["miou"] == pytest.approx(75.0)


def test_score_missing_unknown_and_extra():
    rows = [row("v1", "a", [[0, 5]] * 5, line=1), row("v9", "x", [[0, 1]] * 5, line=2),
            row("v1", "zz", [[0, 1]] * 5, line=3), row("v1", "a", [[0, 5]] * 5, line=4)]
    got, warnings = score("synthetic", QUERIES, rows)
    assert got["r@1,iou=0.5"] == 25.0  # 3 missing queries count as misses
    assert warnings == [
        "1 prediction line(s) name videos that are not in this split and were ignored "
        "(first: line 2, video 'v9', query 'x')",
        "1 prediction line(s) name queries that are not in this split and were ignored "
        "(first: line 3, video 'v1', query 'zz')",
        "1 prediction line(s) repeat a query already predicted and were ignored "
        "(first: line 4, video 'v1', query 'a')",
        "3 of 4 queries have no prediction and count as misses",
    ]


def test_score_nothing_matches_is_an_error():
    with pytest.raises(FsanError, match="none of the 1 predictions matches a query"):
        score("synthetic", QUERIES, [row("v9", "x", [[0, 1]])])


def test_score_moment_outside_duration_names_the_line():
    rows = [row("v1", "a", [[0, 5]], line=1), row("v1", "b", [[5, 10.5]], line=7)]
    with pytest.raises(FsanError) as err:
        score("synthetic", QUERIES, rows)
    assert str(err.value) == (
        "line 7: moment [5, 10.5] is outside the video 'v1' of 10 s (moments must lie in "
        "[0, duration] with start <= end). Clip the predictions to each video's duration."
    )


def test_score_didemo_by_annotation_id():
    queries = [q("v1", "a", 30.0, [[20, 25]], annotation_id=7, chunks=[[4, 4]] * 3 + [[0, 0]]),
               q("v1", "b", 30.0, [[0, 5]], annotation_id=8, chunks=[[0, 0]] * 4)]
    rows = [row("v1", "renamed", [], annotation_id=8, segments=[list(s) for s in ranking_with([(0, 0)])]),
            row("v1", "a", [], annotation_id=7, segments=[list(s) for s in ranking_with([(4, 4)])])]
    got, warnings = score("didemo", queries, rows)
    assert got == pytest.approx({"rank@1": 100.0, "rank@5": 100.0, "miou": 100.0})
    assert warnings == []
    got, warnings = score("didemo", queries, rows[:1])
    assert got == pytest.approx({"rank@1": 50.0, "rank@5": 50.0, "miou": 50.0})
    assert warnings == ["1 of 2 queries have no prediction and count as misses"]


def test_score_didemo_needs_full_ranking():
    queries = [q("v1", "a", 30.0, [[20, 25]], annotation_id=7, chunks=[[4, 4]] * 4)]
    bad = row("v1", "a", [], line=3, annotation_id=7, segments=[list(s) for s in SEGS[:5]])
    with pytest.raises(FsanError, match=r'^line 3: DiDeMo predictions need "segments": all 21'):
        score("didemo", queries, [bad])


def test_score_unknown_dataset():
    with pytest.raises(FsanError, match="unknown dataset 'nope'"):
        score("nope", QUERIES, [])


def ref_mean_sd(values):
    """Mean and sample standard deviation by the textbook loops."""
    total = 0.0
    for x in values:
        total += x
    mean = total / len(values)
    if len(values) < 2:
        return mean, None
    squares = 0.0
    for x in values:
        squares += (x - mean) ** 2
    return mean, (squares / (len(values) - 1)) ** 0.5


@pytest.mark.parametrize("seed", range(20))
def test_mean_sd_matches_the_plain_loops(seed):
    rng = np.random.default_rng(seed)
    values = list(rng.uniform(0, 100, rng.integers(1, 12)))
    mean, sd = mean_sd(values)
    want_mean, want_sd = ref_mean_sd(values)
    assert mean == pytest.approx(want_mean, rel=1e-12, abs=1e-12)
    if len(values) == 1:
        assert sd is None and mean == values[0]
    else:
        assert sd == pytest.approx(want_sd, rel=1e-9, abs=1e-12)
        assert sd == pytest.approx(float(np.std(values, ddof=1)), rel=1e-9, abs=1e-12)
    assert mean_sd(iter(values)) == (mean, sd)  # any iterable, e.g. a generator over runs


def test_mean_sd_of_equal_values_and_of_none():
    assert mean_sd([42.5, 42.5, 42.5]) == (42.5, 0.0)
    with pytest.raises(ValueError):
        mean_sd([])
