"""Scoring as other papers report it: times written at full precision (a saved file scores exactly
as in memory), R@k at any IoU thresholds on request, and the NMS behind R@k stated and chosen."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fsan_cli.evaluate.metrics import (
    asked_thresholds,
    metric_keys,
    moment_metrics,
    parse_thresholds,
)
from fsan_cli.predict.predictor import Predictor
from tests.helpers import TINY_MODEL, make_store, run_evaluate, train_tiny

EVERY = ",".join(f"{t / 20:g}" for t in range(1, 21))  # IoU 0.05, 0.1, ..., 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring")
    store, best = train_tiny(root, root / "runs" / "tiny", [*TINY_MODEL, "train.epochs=1"])
    return root, store, best


def test_rows_carry_the_predictors_seconds_at_full_precision(trained):
    _, store, best = trained
    queries = store.split("test")
    p = Predictor.load(best, torch.device("cpu"))
    answers = p.answer_split(store, queries, 5)
    rows = answers.rows(queries, 5)
    for i, row in enumerate(rows):
        assert [m[:2] for m in row["moments"]] == answers.seconds[i].tolist()


def test_a_saved_file_scores_exactly_as_in_memory_at_every_threshold(trained, tmp_path):
    root, _, best = trained
    saved = tmp_path / "p.jsonl"
    args = ["--checkpoint", str(best), "--iou", EVERY, "--json", "--no-span-prior"]
    memory = run_evaluate([*args, "--save-predictions", str(saved)], root)
    assert memory.exit_code == 0, memory.stderr
    again = run_evaluate(["--predictions", str(saved), "--iou", EVERY, "--json"], root)
    assert again.exit_code == 0, again.stderr
    a, b = json.loads(memory.stdout), json.loads(again.stdout)
    keys = metric_keys("synthetic", parse_thresholds(EVERY))
    assert len(keys) == 2 * 20 + 1 and {k: a[k] for k in keys} == {k: b[k] for k in keys}


def test_r_at_1_iou_0_7_on_activitynet_style_data_when_asked(trained):
    root, store, best = trained
    value = run_evaluate(["--checkpoint", str(best), "--metric", "r@1,iou=0.7", "--no-span-prior"], root)
    assert value.exit_code == 0, value.stderr
    rows = Predictor.load(best, torch.device("cpu"), span_prior=False).rows(store, store.split("test"), 5)
    expected = moment_metrics([r["moments"] for r in rows], [q.times for q in store.split("test")],
                              thresholds=(0.7,))["r@1,iou=0.7"]
    assert value.stdout == f"{expected:.2f}\n"
    table = run_evaluate(["--checkpoint", str(best), "--iou", "0.3,0.5,0.7"], root)
    assert table.exit_code == 0, table.stderr
    header = table.stdout.split("┡")[0]
    assert "0.7" in header and "0.1" not in header


def test_asked_thresholds():
    assert asked_thresholds("activitynet", None, None) is None
    assert asked_thresholds("activitynet", None, "r@1,iou=0.7") == (0.1, 0.3, 0.5, 0.7)
    assert asked_thresholds("activitynet", None, "r@1,iou=0.5") == (0.1, 0.3, 0.5)
    assert asked_thresholds("charades", "0.7,0.3,0.3", None) == (0.3, 0.7)
    assert asked_thresholds("didemo", None, "rank@1") is None


@pytest.mark.parametrize("bad", ["0", "1.5", "a,b", ","])
def test_bad_thresholds_are_one_usage_error(trained, bad):
    """A malformed --iou is bad usage, exit 2, as a malformed --nms is (Typer's own check)."""
    root, _, best = trained
    r = run_evaluate(["--checkpoint", str(best), "--iou", bad], root)
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr.endswith(f"Error: --iou '{bad}' is not a list of IoU thresholds in (0, 1]. "
                             "Pass them separated by commas, e.g. --iou 0.3,0.5,0.7.\n")
    assert r.stderr.count("Error:") == 1 and "Traceback" not in r.stderr
    nms = run_evaluate(["--checkpoint", str(best), "--nms", "7"], root)
    assert (nms.exit_code, nms.stdout) == (2, "")


def test_didemo_has_no_iou_thresholds(tmp_path):
    from fsan_cli.data.store import Query

    q = Query("v1", "a", 30.0, [[0.0, 5.0]], {"annotation_id": 1})
    make_store(tmp_path, "didemo", {"train": [q], "test": [q]})
    r = run_evaluate(["-d", "didemo", "--baseline", "random", "--iou", "0.5"], tmp_path)
    assert (r.exit_code, r.stdout) == (2, "")  # bad usage, as a malformed --iou
    assert r.stderr.endswith("Error: didemo is scored by Rank@k over its segments, not at IoU "
                             "thresholds. Leave out --iou for this dataset.\n")


def test_thresholds_that_print_alike_are_one():
    """0.5 and 0.50000001 print as one key (r@1,iou=0.5): they were two columns of one name, and
    --json kept one of them."""
    assert parse_thresholds("0.5,0.50000001,0.3") == (0.3, 0.5)
    assert parse_thresholds("1e-320") == (1e-320,)


def test_the_nms_behind_r_at_k_is_stated_and_chosen(trained, tmp_path):
    root, store, best = trained
    default = json.loads(run_evaluate(["--checkpoint", str(best), "--json"], root).stdout)
    assert default["nms"] == 0.5  # the synthetic preset's eval.nms
    saved = tmp_path / "none.jsonl"
    r = run_evaluate(["--checkpoint", str(best), "--json", "--nms", "1", "--save-predictions", str(saved)], root)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["nms"] == 1.0
    rows = [json.loads(x) for x in saved.read_text().splitlines()]
    assert {row["nms"] for row in rows} == {1.0}
    # without NMS the top-5 are simply the five best-scored segments: overlapping ones included
    p = Predictor.load(best, torch.device("cpu"), span_prior=False, nms=1.0)
    assert p.nms == 1.0
    clips = store.clips
    out = p.predict(torch.from_numpy(np.asarray(store.features, np.float32)),
                    np.zeros(1, np.int64), p.encode(["a person opens the door"]), 5, maps=False)
    with torch.inference_mode():
        sc = p.model(torch.from_numpy(np.asarray(store.features[:1], np.float32)),
                     torch.from_numpy(p.encode(["a person opens the door"]))).segment_scores[0]
    valid = torch.triu(torch.ones(clips, clips, dtype=torch.bool))
    best5 = torch.topk(sc.masked_fill(~valid, -torch.inf).flatten(), 5).indices
    assert [s * clips + e for s, e in out.segments[0].tolist()] == best5.tolist()
    r = run_evaluate(["--baseline", "prior", "--nms", "1"], root)
    assert r.exit_code == 2 and "--nms chooses a checkpoint's top-k" in r.stderr
