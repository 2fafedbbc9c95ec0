"""Sentence-only data, the weakly supervised case: videos and sentences, no times. Nothing is held
out that can't measure anything, the epoch is chosen by what can be measured without times
(matching), every line says what chose it, and no test table is claimed."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from fsan_cli.app import app
from fsan_cli.data.store import load_store
from fsan_cli.train.matching import candidates, matching_accuracy
from tests.helpers import TINY_MODEL, set_args

WORDS = ["person", "opens", "door", "closes", "window", "man", "cuts", "onion", "woman", "pours",
         "water", "dog", "runs", "ball", "girl", "reads", "book"]


def sentence_only(root: Path, videos: int) -> tuple[Path, Path]:
    """`videos` random 32-d videos with three sentences each, no times and no splits."""
    rng = np.random.default_rng(videos)
    features, annotations = root / "feats.h5", root / "mine.jsonl"
    lines = []
    with h5py.File(features, "w") as h5:
        for v in range(videos):
            rows = int(rng.integers(20, 40))
            h5.create_dataset(f"vid{v:02d}", data=rng.normal(size=(rows, 32)).astype("f4"))
            for _ in range(3):
                query = "the " + " ".join(rng.choice(WORDS, 4))
                lines.append(json.dumps({"video": f"vid{v:02d}", "duration": float(rows), "query": query}))
    annotations.write_text("\n".join(lines) + "\n")
    return annotations, features


def invoke(args: list[str], root: Path):
    return CliRunner().invoke(app, ["--device", "cpu", *args], env={"FSAN_DATA_DIR": str(root / "data"),
                                                                   "COLUMNS": "200", "NO_COLOR": "1"})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("sentences")
    annotations, features = sentence_only(root, 12)
    r = invoke(["prepare", "-d", "custom", "--annotations", str(annotations), "--features", str(features)], root)
    assert r.exit_code == 0, r.output
    return root, r


def test_prepare_holds_out_two_videos_to_match_on_and_their_words_join_the_vocabulary(prepared):
    root, r = prepared
    store = load_store(root / "data" / "custom")
    assert {s: len({q.video for q in qs}) for s, qs in store.splits.items()} == {"train": 10, "val": 2}
    assert ("no val split in the files: 2 of 12 train videos (6 queries, 17%) held out as val to choose the "
            "epoch by matching (does the model rank a sentence's own video first?), which needs no times "
            "(--val-share 0.1; 0 keeps train whole)") in r.stdout
    val_words = {w for q in store.split("val") for w in q.query.split()}
    assert val_words <= set(store.vocab)


def test_a_handful_of_videos_are_all_trained_on(tmp_path):
    annotations, features = sentence_only(tmp_path, 3)
    r = invoke(["prepare", "-d", "custom", "--annotations", str(annotations), "--features", str(features)],
               tmp_path)
    assert r.exit_code == 0, r.output
    assert list(load_store(tmp_path / "data" / "custom").splits) == ["train"]
    assert ("no times in the files and 3 videos: all are trained on, none held out (the last epoch is kept; "
            "at least 6 videos let a held-out val split choose it by matching)") in r.stdout


def test_train_chooses_the_epoch_by_matching_and_claims_no_test_table(prepared):
    root, _ = prepared
    run = root / "runs" / "mine"
    r = invoke(["train", "-d", "custom", "--out", str(run), "--epochs", "2", *set_args(TINY_MODEL)], root)
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    epochs = [x for x in lines if x.startswith("epoch ") and "val match" in x]
    assert len(epochs) == 2 and all("(chance 50%)" in x for x in epochs)
    assert "Span prior: not used (its weight is chosen on val times, and this data has none)" in lines
    assert any(x.startswith("Trained in") and "by val matching (a sentence's own video scored above other "
               "val videos; the data has no times, so no grounding metric chose it)" in x for x in lines)
    assert lines[-1].startswith(f"No test table: the data at {root / 'data' / 'custom'} has no test split")
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [set(x) >= {"val_match", "val_match_chance"} for x in records] == [True, True]
    assert "val_miou" not in records[0]
    best = max(records, key=lambda x: (x["val_match"], -x["epoch"]))
    assert [x["epoch"] for x in records if x["best"]][-1] == best["epoch"]
    # grounding with it says nothing of a span prior it could never have learned
    video = root / "vid03.h5"
    with h5py.File(root / "feats.h5") as src, h5py.File(video, "w") as h5:
        h5["features"] = src["vid03"][()]
        h5.attrs["duration"] = float(len(src["vid03"]))
    g = invoke(["ground", str(video), "the person opens the door", "--checkpoint", str(run / "best.pt")], root)
    assert g.exit_code == 0, g.output
    assert "span prior" not in g.stderr and "vocabulary" not in g.stderr


def test_candidates_put_the_own_video_first_and_draw_others_from_the_rest():
    rng = np.random.default_rng(5)
    rows = rng.integers(0, 7, size=200)
    got = candidates(rows, others=4, seed=1)
    assert got.shape == (200, 5)
    for q in range(200):  # plain-loop reference of the contract
        assert got[q, 0] == rows[q]
        assert len(set(got[q].tolist())) == 5 and set(got[q, 1:].tolist()) <= set(rows.tolist()) - {rows[q]}
    assert (candidates(rows, others=4, seed=1) == got).all()  # the same pairs every epoch
    assert candidates(np.array([3, 3, 8]), others=4).tolist() == [[3, 8], [3, 8], [8, 3]]


def test_matching_accuracy_against_a_plain_loop():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(300, 5)).astype(float)  # many ties: a tie is a miss
    expected = 100 * sum(all(row[0] > x for x in row[1:]) for row in scores) / len(scores)
    assert matching_accuracy(scores) == pytest.approx(expected)
