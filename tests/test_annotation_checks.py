"""What `fsan prepare` does with bad annotations: times or durations that are not finite
numbers and spans outside the video are dropped and counted, never stored clipped into
nonsense or as non-standard JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fsan_cli.data.annotations import clip_span
from fsan_cli.data.store import load_store
from tests.test_prepare_cli import invoke, write_anet, write_custom

NOT_FINITE = "time is not a finite number"
BEFORE_0 = "ends before the video starts"
BAD_DURATION = "duration is not a positive finite number"


@pytest.mark.parametrize("start,end,duration,expected", [
    (-20, -5, 30, (None, BEFORE_0)),
    (-20, 0, 30, (None, BEFORE_0)),
    (math.nan, 5, 30, (None, NOT_FINITE)),
    (2, math.nan, 30, (None, NOT_FINITE)),
    (2, math.inf, 30, (None, NOT_FINITE)),
    (2, 5, math.inf, (None, BAD_DURATION)),
    (2, 5, math.nan, (None, BAD_DURATION)),
    (-20, 5, 30, ([0.0, 5.0], None)),  # reaches before 0: clipped, as past the end
    (25, 40, 30, ([25.0, 30.0], None)),
    (9, 5, 30, (None, "start >= end")),
])
def test_clip_span(start, end, duration, expected):
    assert clip_span(start, end, duration) == expected


def store_text(folder: Path) -> str:
    return "".join(p.read_text() for p in folder.iterdir() if p.suffix in (".json", ".jsonl"))


def test_custom_lines_with_bad_times_or_durations_are_dropped_and_counted(tmp_path):
    good = {"video": "a", "duration": 30, "query": "a man opens the door", "times": [2, 8]}
    ann, feats = write_custom(tmp_path, [
        good,
        {**good, "query": "before the start", "times": [-20, -5]},
        '{"video": "a", "duration": 30, "query": "not a number", "times": [NaN, 5]}',
        '{"video": "b", "duration": Infinity, "query": "endless", "times": [1, 2]}',
        '{"video": "c", "duration": NaN, "query": "no length"}',
        {**good, "query": "one good pair of two", "times": [[-20, -5], [3, 4]]},
    ])
    result = invoke("prepare", "--dataset", "custom", "--annotations", ann, "--features", feats,
                    "--out", tmp_path / "s", "--json", "--val-share", "0")
    assert result.exit_code == 0, result.stderr
    s = json.loads(result.stdout)
    assert s["dropped"] == [{"split": "train", "reason": BAD_DURATION, "count": 2},
                            {"split": "train", "reason": BEFORE_0, "count": 1},
                            {"split": "train", "reason": NOT_FINITE, "count": 1}]
    assert s["splits"]["train"] == {"read": 6, "queries": 2, "videos": 1, "clipped": 1}
    store = load_store(tmp_path / "s")
    assert [(q.query, q.times) for q in store.splits["train"]] == [
        ("a man opens the door", [[2.0, 8.0]]), ("one good pair of two", [[3.0, 4.0]])]
    text = store_text(tmp_path / "s")
    assert "Infinity" not in text and "NaN" not in text


def test_activitynet_entries_with_bad_times_or_durations_are_dropped_and_counted(tmp_path):
    folder = tmp_path / "anet"
    folder.mkdir()
    good = {"duration": 30.0, "timestamps": [[2, 8]], "sentences": ["a man opens the door"]}
    train = {
        "v_a": {"duration": 30.0, "timestamps": [[2, 8], [-20, -5], [math.nan, 5], [-3, 4]],
                "sentences": ["a man opens the door", "before", "not a number", "from before"]},
        "v_b": {"duration": math.inf, "timestamps": [[1, 2]], "sentences": ["endless"]},
        "v_c": good,
    }
    (folder / "train.json").write_text(json.dumps(train))  # json writes NaN and Infinity
    (folder / "val_1.json").write_text(json.dumps({"v_d": good}))
    (folder / "val_2.json").write_text(json.dumps({"v_e": good}))
    feats = write_anet(tmp_path / "c3d.hdf5", ["v_a", "v_b", "v_c", "v_d", "v_e"])
    result = invoke("prepare", "--dataset", "activitynet", "--annotations", folder, "--features", feats,
                    "--out", tmp_path / "s", "--json")
    assert result.exit_code == 0, result.stderr
    s = json.loads(result.stdout)
    assert s["dropped"] == [{"split": "train", "reason": BAD_DURATION, "count": 1},
                            {"split": "train", "reason": BEFORE_0, "count": 1},
                            {"split": "train", "reason": NOT_FINITE, "count": 1}]
    store = load_store(tmp_path / "s")
    assert sorted((q.video, q.query, tuple(map(tuple, q.times))) for q in store.splits["train"]) == [
        ("v_a", "a man opens the door", ((2.0, 8.0),)), ("v_a", "from before", ((0.0, 4.0),)),
        ("v_c", "a man opens the door", ((2.0, 8.0),))]
    assert "v_b" not in store.video_index
    text = store_text(tmp_path / "s")
    assert "Infinity" not in text and "NaN" not in text


def test_repeated_lines_and_videos_in_train_and_test_are_counted_and_warned(tmp_path):
    line = {"video": "a", "duration": 30, "query": "a man opens the door", "times": [2, 8]}
    ann, feats = write_custom(tmp_path, [
        line, line, line,  # twice repeated
        {**line, "times": [3, 9]},  # the same sentence at other times: another annotation
        {**line, "video": "b", "duration": 12.5, "split": "val"},
        {**line, "video": "c", "duration": 20, "split": "test"},
        {**line, "video": "a", "split": "test"},  # a train video
        {**line, "video": "b", "duration": 12.5, "split": "test"},  # a val video: allowed
    ])
    result = invoke("prepare", "--dataset", "custom", "--annotations", ann, "--features", feats,
                    "--out", tmp_path / "s", "--json")
    assert result.exit_code == 0, result.stderr
    expected = ["2 train lines repeat another line exactly (same video, sentence and times); kept, so "
                "they count more than once",
                "1 videos are in both train and test (a): the model is scored on test videos it was "
                "trained on"]
    assert json.loads(result.stdout)["warnings"] == expected
    assert result.stderr.endswith("".join(f"Warning: {w}\n" for w in expected))
    assert len(load_store(tmp_path / "s").splits["train"]) == 4
