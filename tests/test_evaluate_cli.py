"""`fsan evaluate` through the CLI: exact stdout, stderr and exit codes."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fsan_cli.app import app
from fsan_cli.data.store import Query
from fsan_cli.evaluate.metrics import didemo_segments
from tests.helpers import make_store, run_evaluate

SEGS = [list(s) for s in didemo_segments()]

TEST = [
    Query("v1", "a", 10.0, [[0, 5]]),
    Query("v1", "b", 10.0, [[5, 10]]),
    Query("v2", "c", 20.0, [[0, 20]]),
    Query("v2", "c", 20.0, [[10, 20]]),  # the same sentence twice in one video
]
TRAIN = [Query("v3", "d", 30.0, [[0, 30]]), Query("v3", "e", 30.0, [[3, 27]])]

# hand-worked against TEST: top-1 IoUs 1, 0.5, 0.3 (exactly), 0; the 4th query's 2nd moment 0.5
PREDICTIONS = [
    {"video": "v1", "query": "a", "duration": 10.0, "moments": [[0, 5, 0.9]]},
    {"video": "v1", "query": "b", "duration": 10.0, "moments": [[0, 10, 0.9], [5, 10, 0.5]]},
    {"video": "v2", "query": "c", "duration": 20.0, "moments": [[0, 6, 0.9]]},
    {"video": "v2", "query": "c", "duration": 20.0, "moments": [[0, 2, 0.9], [10, 15, 0.5]]},
]
EXPECTED = {
    "r@1,iou=0.1": 75.0, "r@1,iou=0.3": 75.0, "r@1,iou=0.5": 50.0,
    "r@5,iou=0.1": 100.0, "r@5,iou=0.3": 100.0, "r@5,iou=0.5": 75.0, "miou": 45.0,
}
SHORT_WARNING = (
    "Warning: 4 predicted queries have fewer than 5 moments; R@5 counts only the moments given\n"
)


def didemo_query(i: int, chunks: list[list[int]]) -> Query:
    times = [[5.0 * a, 5.0 * (b + 1)] for a, b in chunks]
    return Query(f"d{i}", f"sentence {i}", 30.0, times, {"annotation_id": i, "chunks": chunks})


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    make_store(tmp_path, "synthetic", {"train": TRAIN, "val": TEST[:2], "test": TEST})
    didemo_test = [didemo_query(1, [[4, 4], [4, 4], [0, 0], [4, 4]]), didemo_query(2, [[0, 1]] * 4)]
    didemo_val = [didemo_query(3, [[4, 4]] * 4)]
    make_store(tmp_path, "didemo", {"val": didemo_val, "test": didemo_test})
    return tmp_path


@pytest.fixture
def preds_file(tmp_path: Path) -> Path:
    path = tmp_path / "preds.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PREDICTIONS), encoding="utf-8")
    return path


run = run_evaluate


def test_json_from_predictions_file(data_dir, preds_file):
    r = run(["--predictions", str(preds_file), "--json"], data_dir)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"dataset": "synthetic", "split": "test", "queries": 4,
                                    "predicted": 4, **EXPECTED, "nms": None}
    assert r.stdout.count("\n") == 1
    assert r.stderr == (
        "Matched 4 of 4 prediction rows to the 4 queries of test\n"
        "Warning: 1 texts are asked more than once of one video with other times (first: video "
        "'v2', query 'c'): their rows were matched in file order; give each row the query's "
        "annotation_id to match it exactly\n" + SHORT_WARNING)


def test_metric_prints_one_number(data_dir, preds_file):
    r = run(["--predictions", str(preds_file), "--metric", "r@1,iou=0.5"], data_dir)
    assert (r.exit_code, r.stdout) == (0, "50.00\n")
    r = run(["--predictions", str(preds_file), "--metric", "miou", "-"], data_dir)
    assert r.exit_code == 2  # a stray argument is bad usage


def test_unknown_metric_lists_valid_names(data_dir, preds_file):
    r = run(["--predictions", str(preds_file), "--metric", "rank@1"], data_dir)
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr == (
        "Error: unknown metric 'rank@1' for synthetic. Use one of: r@1,iou=0.1, r@1,iou=0.3, "
        "r@1,iou=0.5, r@5,iou=0.1, r@5,iou=0.3, r@5,iou=0.5, miou.\n"
    )


def test_predictions_from_stdin(data_dir):
    text = "".join(json.dumps(r) + "\n" for r in PREDICTIONS)
    r = run(["--predictions", "-", "--metric", "miou"], data_dir, input=text)
    assert (r.exit_code, r.stdout) == (0, "45.00\n")


def test_one_source_at_most(data_dir):
    r = run(["--baseline", "random", "--predictions", "x.jsonl"], data_dir)
    assert (r.exit_code, r.stdout) == (2, "")  # bad usage
    assert r.stderr == (
        "Usage: fsan evaluate [OPTIONS]\nTry 'fsan evaluate --help' for help.\n\n"
        "Error: pass one of --checkpoint, --predictions or --baseline (got --predictions and "
        "--baseline). For example: fsan evaluate --dataset didemo --predictions preds.jsonl.\n"
    )


@pytest.mark.parametrize("dataset, hint", [("synthetic", "fsan train"), ("didemo", "fsan train --dataset didemo")])
def test_no_source_and_no_run_says_how_to_make_one(data_dir, tmp_path, monkeypatch, dataset, hint):
    monkeypatch.chdir(tmp_path)
    r = run(["--dataset", dataset], data_dir)
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr == (f"Error: no checkpoint of {dataset} found under runs/. Train one with "
                        f"`{hint}`, or pass --checkpoint PATH.\n")


def test_malformed_line_names_its_number(data_dir, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(PREDICTIONS[0]) + "\n\n{\"video\": \"v1\", oops}\n", encoding="utf-8")
    r = run(["--predictions", str(path)], data_dir)
    assert r.exit_code == 1
    assert r.stderr.startswith(f"Error: line 3 of {path} is not valid JSON (")
    path.write_text(json.dumps({**PREDICTIONS[0], "moments": [[3, 1]]}) + "\n", encoding="utf-8")
    r = run(["--predictions", str(path)], data_dir)
    assert r.stderr.startswith(f"Error: line 1 of {path} moment 1 is [3, 1]: it needs 0 <= start <= end.")


def test_moment_past_the_video_is_an_error(data_dir, tmp_path):
    path = tmp_path / "long.jsonl"
    rows = [dict(PREDICTIONS[0]), {"video": "v1", "query": "b", "moments": [[5, 12]]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    r = run(["--predictions", str(path)], data_dir)
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr == (
        "Error: line 2: moment [5, 12] is outside the video 'v1' of 10 s (moments must lie in "
        "[0, duration] with start <= end). Clip the predictions to each video's duration.\n"
    )


def test_unknown_and_missing_queries_are_said(data_dir, tmp_path):
    path = tmp_path / "partial.jsonl"
    rows = [PREDICTIONS[0], {"video": "v9", "query": "zz", "moments": [[0, 1]] * 5}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    r = run(["--predictions", str(path), "--metric", "miou"], data_dir)
    assert (r.exit_code, r.stdout) == (0, "25.00\n")
    assert r.stderr == (
        "Matched 1 of 2 prediction rows to the 4 queries of test\n"
        "Warning: 1 prediction line(s) name videos that are not in this split and were ignored "
        "(first: line 2, video 'v9', query 'zz')\n"
        "Warning: 3 of 4 queries have no prediction and count as misses\n"
        "Warning: 1 predicted queries have fewer than 5 moments; R@5 counts only the moments given\n"
    )


def test_table_has_run_and_both_baselines(data_dir, preds_file):
    r = run(["--predictions", str(preds_file)], data_dir)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].strip() == "Embedded synthetic benchmark"
    run_line = next(line for line in lines if line.startswith(f"│ predictions ({preds_file})"))
    assert [c.strip() for c in run_line.split("│")[2:-1]] == [f"{v:.2f}" for v in EXPECTED.values()]
    assert any(line.startswith("│ Random (seed 0)") for line in lines)
    assert any(line.startswith("│ Prior (best fixed segment on train)") for line in lines)
    assert "(paper)" not in r.stdout  # no paper rows for synthetic data
    assert "A hit is IoU >= threshold with any annotated moment" in r.stdout
    assert "NMS behind this run's moments: as in the file; evaluate applies none." in r.stdout


def test_prior_row_scores_the_whole_video(data_dir):
    r = run(["--baseline", "prior", "--json"], data_dir)
    got = json.loads(r.stdout)
    # whole video on TEST: IoUs 0.5, 0.5, 1, 0.5
    assert got["r@1,iou=0.5"] == 100.0 and got["miou"] == 62.5
    assert r.stderr == ""


def test_random_baseline_is_seeded(data_dir):
    a = run(["--baseline", "random", "--json", "--seed", "3"], data_dir).stdout
    b = run(["--baseline", "random", "--json", "--seed", "3"], data_dir).stdout
    c = run(["--baseline", "random", "--json", "--seed", "4"], data_dir).stdout
    assert a == b != c


def test_save_predictions_writes_what_was_scored(data_dir, tmp_path):
    out = tmp_path / "saved.jsonl"
    r = run(["--baseline", "random", "--save-predictions", str(out), "--metric", "miou"], data_dir)
    assert r.exit_code == 0
    assert r.stderr == f"Wrote 4 predictions to {out}\n"
    again = run(["--predictions", str(out), "--metric", "miou"], data_dir)
    assert again.stdout == r.stdout
    assert not list(tmp_path.glob(".saved.jsonl.*"))  # the temporary file was renamed


def test_didemo_table_and_json(data_dir, tmp_path):
    path = tmp_path / "didemo.jsonl"
    first = [[4, 4]] + [s for s in SEGS if s != [4, 4]]
    rows = [{"video": "d1", "query": "sentence 1", "duration": 30.0, "annotation_id": 1,
             "moments": [[20, 25, 1.0]], "segments": first},
            {"video": "d2", "query": "sentence 2", "duration": 30.0, "annotation_id": 2,
             "moments": [[0, 5, 1.0]], "segments": SEGS}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    r = run(["--dataset", "didemo", "--predictions", str(path), "--json"], data_dir)
    # query 2: annotators all on (0, 1), ranked 2nd -> mean rank 2; top-1 (0, 0) IoU 1/2
    assert json.loads(r.stdout) == {"dataset": "didemo", "split": "test", "queries": 2,
                                    "predicted": 2, "rank@1": 50.0, "rank@5": 100.0, "miou": 75.0,
                                    "nms": None}
    r = run(["--dataset", "didemo", "--predictions", str(path)], data_dir)
    assert r.exit_code == 0, r.output
    assert "│ FSAN (paper)" in r.stdout and "│ fully supervised (paper)" in r.stdout
    assert "│ Prior (best fixed segment on val)" in r.stdout  # no DiDeMo train split: chosen on val
    assert "Official DiDeMo protocol" in r.stdout


def test_didemo_rows_need_segments(data_dir, tmp_path):
    path = tmp_path / "didemo.jsonl"
    path.write_text(json.dumps({"video": "d1", "query": "q", "annotation_id": 1,
                                "moments": [[20, 25]]}) + "\n", encoding="utf-8")
    r = run(["--dataset", "didemo", "--predictions", str(path)], data_dir)
    assert r.exit_code == 1
    assert r.stderr.startswith('Error: line 1: DiDeMo predictions need "segments": all 21 chunk pairs')


def test_missing_store_says_prepare(tmp_path, preds_file):
    r = run(["--dataset", "charades", "--predictions", str(preds_file)], tmp_path)
    assert r.exit_code == 1
    assert r.stderr == (
        f"Error: no prepared data at {tmp_path / 'charades'}. "
        "Run `fsan prepare --dataset charades ...` first, or pass --data-dir.\n"
    )


def test_bad_split_and_dataset(data_dir, preds_file):
    assert run(["--split", "train", "--baseline", "random"], data_dir).exit_code == 2
    r = run(["--dataset", "kinetics", "--baseline", "random"], data_dir)
    assert (r.exit_code, r.stderr) == (
        1, "Error: unknown dataset 'kinetics'. Use one of: activitynet, charades, didemo, "
           "synthetic, custom.\n")


def test_checkpoint_path_uses_predict_queries(data_dir, tmp_path, monkeypatch):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"not read by the fake")
    calls = []

    class FakePredictor:
        @staticmethod
        def load(checkpoint, device, span_prior=True, nms=None):
            def answer_split(store, queries, top_k):
                calls.append((checkpoint, store.path.name, len(queries), str(device), top_k))
                return types.SimpleNamespace(rows=lambda queries, top_k: [dict(r) for r in PREDICTIONS],
                                             prior_weight=None, changed_share=None)

            return types.SimpleNamespace(answer_split=answer_split, data={})

    monkeypatch.setattr("fsan_cli.evaluate.evaluation.Predictor", FakePredictor)
    monkeypatch.setattr("fsan_cli.core.device.resolve_device", lambda spec: f"resolved {spec}")
    r = CliRunner().invoke(app, ["--device", "cpu", "evaluate", "--checkpoint", str(ckpt),
                                 "--top-k", "2", "--metric", "r@5,iou=0.5"],
                           env={"FSAN_DATA_DIR": str(data_dir)})
    assert (r.exit_code, r.stdout) == (0, "75.00\n")
    assert calls == [(ckpt, "synthetic", 4, "resolved cpu", 2)]
    assert r.stderr == f"Predicting 4 queries of synthetic test with {ckpt}\n" + SHORT_WARNING


def test_missing_checkpoint(data_dir, tmp_path):
    r = run(["--checkpoint", str(tmp_path / "none.pt")], data_dir)
    assert (r.exit_code, r.stderr) == (
        1, f"Error: checkpoint {tmp_path / 'none.pt'} does not exist. "
           "Check the path (e.g. runs/x/best.pt).\n")


def test_unannotated_split_is_an_error_before_predicting(tmp_path):
    make_store(tmp_path, "custom", {"test": [Query("v1", "a", 10.0, [])]})
    r = run(["--dataset", "custom", "--baseline", "random"], tmp_path)
    assert (r.exit_code, r.stderr) == (
        1, "Error: 1 queries of this split have no ground-truth times (first: video 'v1', "
           "query 'a'). Evaluate on an annotated split.\n")


def render(table) -> str:
    from rich.console import Console

    console = Console(width=200, no_color=True, record=True)
    console.print(table)
    return console.export_text()


def test_results_table_layouts():
    from fsan_cli.evaluate.metrics import metric_keys
    from fsan_cli.evaluate.report import PAPER_TABLE4, results_table

    text = render(results_table("activitynet", [("mine", {"miou": 12.345})], caption="note"))
    assert "ActivityNet-Captions (layout of the paper's Table 3)" in text
    assert "SCN 2020 (paper)" in text and "2D-TAN 2020b (paper)" in text
    mine = next(line for line in text.splitlines() if line.startswith("│ mine"))
    assert [c.strip() for c in mine.split("│")[2:-1]] == ["-"] * 6 + ["12.35"]
    text = render(results_table("didemo", [], paper_rows=True))
    assert "│ Random (paper)" in text and "Rank@5" in text
    text = render(results_table("charades", [("mine", {})]))
    assert "(paper)" not in text and "0.7" in text
    assert "(paper)" not in render(results_table("activitynet", [], paper_rows=False))
    assert metric_keys("charades")[-1] == "miou"
    assert PAPER_TABLE4[-1][1] == "full model"
    assert PAPER_TABLE4[0][2]["r@1,iou=0.1"] == 82.58
