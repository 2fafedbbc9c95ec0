"""`fsan evaluate --by-length`: metrics by video length (paper Figure 4), scored per bucket by the
same path as the whole split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fsan_cli.data.store import Query
from fsan_cli.evaluate import baselines
from fsan_cli.evaluate.breakdown import PAPER_FIGURE4_EDGES, by_length, length_edges, matched_rows
from fsan_cli.evaluate.metrics import metric_keys
from fsan_cli.evaluate.scoring import score
from tests.helpers import make_store, run_evaluate


def random_split(dataset: str, n: int = 120, seed: int = 1) -> list[Query]:
    """n queries over videos of 3-300 s, one to three ground-truth moments each."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        # DiDeMo's videos all last 25-30 s: spread them so that its quartiles differ
        duration = float(np.round(25 + 5 * i / n if dataset == "didemo" else rng.uniform(3, 300), 2))
        video = f"v{i // 3}" if dataset != "didemo" else f"d{i}"
        times = []
        for _ in range(int(rng.integers(1, 4))):
            s = float(rng.uniform(0, duration * 0.8))
            times.append([s, float(rng.uniform(s + 0.1, duration))])
        extra = {}
        if dataset == "didemo":
            chunks = [[int(a), int(b)] for a, b in np.sort(rng.integers(0, 6, (4, 2)), axis=1)]
            times = [[5.0 * a, 5.0 * (b + 1)] for a, b in chunks]
            extra = {"annotation_id": i, "chunks": chunks}
        # the same sentence twice in one video: rows match in order, within a bucket too
        text = "the same sentence" if i % 10 == 0 else f"sentence {i}"
        out.append(Query(video, text, duration, times, extra))
    return out


def predictions_for(dataset: str, queries: list[Query]) -> list[dict]:
    """Random top-5 rows, every 7th query missing, plus a row of an unknown video."""
    rows = baselines.random_predictions(queries, 5, 0, dataset)
    kept = [r for i, r in enumerate(rows) if i % 7 != 3]
    return [*kept, {**kept[0], "video": "elsewhere", "annotation_id": 10**6}]


@pytest.mark.parametrize("dataset", ["activitynet", "synthetic", "charades", "didemo"])
def test_each_bucket_scores_as_the_whole_split_would_on_its_subset(dataset):
    queries = random_split(dataset)
    rows = predictions_for(dataset, queries)
    result = by_length(dataset, queries, matched_rows(dataset, queries, rows))
    assert sum(b.queries for b in result.buckets) == len(queries)
    assert len(result.buckets) > 1
    for b in result.buckets:
        subset = [q for q in queries
                  if q.duration >= b.low and (b.high is None or q.duration < b.high)]
        assert len(subset) == b.queries > 0
        assert b.metrics == score(dataset, subset, rows)[0]  # the same rows, scored on the subset
    # every metric is a mean over queries: the buckets, weighted by size, give the whole split's
    whole = score(dataset, queries, rows)[0]
    for key in metric_keys(dataset):
        weighted = sum(b.metrics[key] * b.queries for b in result.buckets) / len(queries)
        assert weighted == pytest.approx(whole[key], abs=1e-9)


def test_a_bucket_without_any_prediction_is_all_misses():
    queries = [Query("v1", "a", 10.0, [[0, 5]]), Query("v2", "b", 100.0, [[0, 50]])]
    rows = matched_rows("activitynet", queries, [{"video": "v1", "query": "a", "moments": [[0, 5]]}])
    result = by_length("activitynet", queries, rows)
    assert [(b.label, b.queries) for b in result.buckets] == [("< 12 s", 1), ("92-102 s", 1)]
    assert set(result.buckets[1].metrics.values()) == {0.0}
    assert result.buckets[0].metrics["miou"] == 100.0


def test_activitynet_uses_the_papers_figure4_intervals():
    edges, note = length_edges("activitynet", np.array([5.0, 300.0]))
    assert edges.tolist() == list(PAPER_FIGURE4_EDGES) == [12.0 + 10 * i for i in range(23)]
    assert "Figure 4" in note and '"2-12s"' in note and '">230s"' in note
    queries = [Query(f"v{d}", "a", d, [[0, d]]) for d in (2.3, 11.99, 12.0, 231.99, 232.0, 745.5)]
    rows = matched_rows("activitynet", queries, baselines.random_predictions(queries, 1, 0))
    labels = [(b.label, b.low, b.high, b.queries) for b in by_length("activitynet", queries, rows).buckets]
    assert labels == [("< 12 s", 0.0, 12.0, 2), ("12-22 s", 12.0, 22.0, 1),
                      ("222-232 s", 222.0, 232.0, 1), (">= 232 s", 232.0, None, 2)]


def test_other_datasets_use_quartiles_and_say_so():
    edges, note = length_edges("didemo", np.array([10.0, 10, 20, 30, 40, 40]))
    assert edges.tolist() == [12.5, 25.0, 37.5]
    assert note == ("Buckets: quartiles of this split's query durations (the paper gives no length "
                    "intervals for DiDeMo).")
    # ties: repeated quartiles collapse, and none leaves an empty bucket at either end
    assert length_edges("charades", np.array([10.0, 10, 10, 20]))[0].tolist() == [12.5]
    assert length_edges("synthetic", np.full(5, 30.0))[0].tolist() == []
    one = [Query("v1", "a", 30.0, [[0, 10]]), Query("v1", "b", 30.0, [[10, 30]])]
    buckets = by_length("synthetic", one, matched_rows("synthetic", one, baselines.random_predictions(one))).buckets
    assert [(b.label, b.low, b.high, b.queries) for b in buckets] == [("all", 0.0, None, 2)]


def test_activitynet_val2_buckets_reproduce_the_papers_counts(shared_data):
    path = shared_data / "activitynet" / "val_2.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    videos = json.loads(path.read_text(encoding="utf-8"))
    queries = [Query(v, s, float(a["duration"]), [t])
               for v, a in videos.items() for s, t in zip(a["sentences"], a["timestamps"], strict=True)]
    durations = np.array([a["duration"] for a in videos.values()])
    edges, _ = length_edges("activitynet", durations)
    per_video = np.bincount(np.searchsorted(edges, durations, side="right"), minlength=24)
    assert per_video[0] == 130  # the paper: "shortest videos (2-12s, 130 cases)"
    assert per_video[-1] == 139  # the paper: "longest videos (>230s, 140 cases)"
    rows = baselines.random_predictions(queries, 5, 0, "activitynet")
    result = by_length("activitynet", queries, rows)
    assert len(result.buckets) == 24 and sum(b.queries for b in result.buckets) == len(queries) == 17031
    assert result.buckets[0].queries == 413 and result.buckets[-1].label == ">= 232 s"


# ----------------------------------------------------------------------------- the CLI

TRAIN = [Query("t1", "x", 30.0, [[0, 30]]), Query("t2", "y", 60.0, [[0, 40]])]
TEST = [
    Query("v1", "a", 10.0, [[0, 5]]),
    Query("v1", "b", 10.0, [[5, 10]]),
    Query("v2", "c", 20.0, [[0, 10]]),
    Query("v3", "d", 30.0, [[0, 30]]),
    Query("v4", "e", 40.0, [[0, 20]]),
    Query("v4", "f", 40.0, [[20, 40]]),  # no prediction: a miss
]
# top-1 IoUs by hand: 1, 0.5 | 0.4 | 0.1 (exactly) | 1, miss; quartiles of 10 10 20 30 40 40
PREDICTIONS = [
    {"video": "v1", "query": "a", "moments": [[0, 5]]},
    {"video": "v1", "query": "b", "moments": [[0, 10]]},
    {"video": "v2", "query": "c", "moments": [[0, 4]]},
    {"video": "v3", "query": "d", "moments": [[0, 3]]},
    {"video": "v4", "query": "e", "moments": [[0, 20]]},
]
BY_LENGTH = [
    {"bucket": "< 12.5 s", "low": 0.0, "high": 12.5, "queries": 2,
     "r@1,iou=0.1": 100.0, "r@1,iou=0.3": 100.0, "r@1,iou=0.5": 100.0,
     "r@5,iou=0.1": 100.0, "r@5,iou=0.3": 100.0, "r@5,iou=0.5": 100.0, "miou": 75.0},
    {"bucket": "12.5-25 s", "low": 12.5, "high": 25.0, "queries": 1,
     "r@1,iou=0.1": 100.0, "r@1,iou=0.3": 100.0, "r@1,iou=0.5": 0.0,
     "r@5,iou=0.1": 100.0, "r@5,iou=0.3": 100.0, "r@5,iou=0.5": 0.0, "miou": 40.0},
    {"bucket": "25-37.5 s", "low": 25.0, "high": 37.5, "queries": 1,
     "r@1,iou=0.1": 100.0, "r@1,iou=0.3": 0.0, "r@1,iou=0.5": 0.0,
     "r@5,iou=0.1": 100.0, "r@5,iou=0.3": 0.0, "r@5,iou=0.5": 0.0, "miou": 10.0},
    {"bucket": ">= 37.5 s", "low": 37.5, "high": None, "queries": 2,
     "r@1,iou=0.1": 50.0, "r@1,iou=0.3": 50.0, "r@1,iou=0.5": 50.0,
     "r@5,iou=0.1": 50.0, "r@5,iou=0.3": 50.0, "r@5,iou=0.5": 50.0, "miou": 50.0},
]
QUARTILES = ("Buckets: quartiles of this split's query durations (the paper gives no length "
             "intervals for the synthetic data).")
LENGTH_TABLE = """\
Embedded synthetic benchmark by video length (paper Figure 4)
┏━━━━━━━━━━━━━━┳━━━━━━━━━┳━━━━━━━━┳━━━━━━━━┳━━━━━━━━┳━━━━━━━━┳━━━━━━━━┳━━━━━━━━┳━━━━━━━┓
┃              ┃         ┃    R@1 ┃    R@1 ┃    R@1 ┃    R@5 ┃    R@5 ┃    R@5 ┃       ┃
┃              ┃         ┃    IoU ┃    IoU ┃    IoU ┃    IoU ┃    IoU ┃    IoU ┃       ┃
┃ Video length ┃ Queries ┃    0.1 ┃    0.3 ┃    0.5 ┃    0.1 ┃    0.3 ┃    0.5 ┃  mIoU ┃
┡━━━━━━━━━━━━━━╇━━━━━━━━━╇━━━━━━━━╇━━━━━━━━╇━━━━━━━━╇━━━━━━━━╇━━━━━━━━╇━━━━━━━━╇━━━━━━━┩
│ < 12.5 s     │       2 │ 100.00 │ 100.00 │ 100.00 │ 100.00 │ 100.00 │ 100.00 │ 75.00 │
│ 12.5-25 s    │       1 │ 100.00 │ 100.00 │   0.00 │ 100.00 │ 100.00 │   0.00 │ 40.00 │
│ 25-37.5 s    │       1 │ 100.00 │   0.00 │   0.00 │ 100.00 │   0.00 │   0.00 │ 10.00 │
│ >= 37.5 s    │       2 │  50.00 │  50.00 │  50.00 │  50.00 │  50.00 │  50.00 │ 50.00 │
└──────────────┴─────────┴────────┴────────┴────────┴────────┴────────┴────────┴───────┘
predictions (stdin), split test. Buckets: quartiles of this split's query durations (the paper \
gives no length intervals for the synthetic data).
"""


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    make_store(tmp_path, "synthetic", {"train": TRAIN, "test": TEST})
    return tmp_path


@pytest.fixture
def preds_file(tmp_path: Path) -> Path:
    path = tmp_path / "preds.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PREDICTIONS), encoding="utf-8")
    return path


run = run_evaluate


def test_by_length_prints_a_second_table_after_the_main_one(data_dir, preds_file):
    text = preds_file.read_text()
    plain = run(["--predictions", "-"], data_dir, input=text)
    r = run(["--predictions", "-", "--by-length"], data_dir, input=text)
    assert (r.exit_code, plain.exit_code) == (0, 0), r.output
    assert r.stdout == plain.stdout + "\n" + LENGTH_TABLE  # the main table unchanged, then this one
    assert r.stderr == plain.stderr
    # the bucket rows are the numbers score() gives on each subset alone
    assert score("synthetic", TEST[:2], PREDICTIONS)[0] == {k: v for k, v in BY_LENGTH[0].items()
                                                             if k not in ("bucket", "low", "high", "queries")}


def test_json_gains_a_by_length_list(data_dir, preds_file):
    r = run(["--predictions", str(preds_file), "--json", "--by-length"], data_dir)
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["by_length"] == BY_LENGTH
    assert got["by_length_buckets"] == QUARTILES
    assert sum(b["queries"] for b in got["by_length"]) == got["queries"] == 6
    assert (got["r@1,iou=0.1"], got["miou"]) == (pytest.approx(500 / 6), 50.0)
    plain = json.loads(run(["--predictions", str(preds_file), "--json"], data_dir).stdout)
    assert "by_length" not in plain and plain == {k: v for k, v in got.items() if "by_length" not in k}


def test_plot_writes_a_png(data_dir, preds_file, tmp_path):
    out = tmp_path / "lengths.png"
    r = run(["--predictions", str(preds_file), "--json", "--plot", str(out)], data_dir)
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.stderr.endswith(f"Wrote the figure to {out}\n")
    assert json.loads(r.stdout)["by_length"] == BY_LENGTH  # --plot implies --by-length


def test_plot_into_a_missing_folder_makes_it(data_dir, preds_file, tmp_path):
    out = tmp_path / "figures" / "by-length" / "f.png"
    r = run(["--predictions", str(preds_file), "--plot", str(out)], data_dir)
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_under_a_file_fails_before_any_work(tmp_path, preds_file):
    # no store under tmp_path/charades: the --plot error comes before reading it
    (tmp_path / "notes").write_text("a file, not a folder\n")
    r = run(["--dataset", "charades", "--predictions", str(preds_file), "--by-length",
             "--plot", str(tmp_path / "notes" / "figs" / "f.png")], tmp_path)
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr == (f"Error: cannot make the folder of --plot {tmp_path / 'notes' / 'figs' / 'f.png'}: "
                        f"{tmp_path / 'notes'} is not a folder. Fix the path of --plot.\n")
    assert not (tmp_path / "charades").exists()


def test_plot_without_matplotlib_is_a_clear_error(data_dir, preds_file, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    r = run(["--predictions", str(preds_file), "--plot", str(tmp_path / "f.png")], data_dir)
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr == ("Error: --plot needs matplotlib, which is not installed. Install the plot "
                        "extra: pip install 'fsan[plot]' (or pip install matplotlib).\n")


def test_metric_has_no_breakdown(data_dir, preds_file):
    r = run(["--predictions", str(preds_file), "--metric", "miou", "--by-length"], data_dir)
    assert (r.exit_code, r.stdout) == (2, "")  # bad usage
    assert r.stderr == ("Usage: fsan evaluate [OPTIONS]\nTry 'fsan evaluate --help' for help.\n\n"
                        "Error: --metric prints one number, which has no breakdown by video length. "
                        "Drop --by-length and --plot, or --metric.\n")
