"""Prediction files written with the official annotation text score as the prepared store does."""

from __future__ import annotations

import json

from fsan_cli.data.activitynet import read_annotations
from fsan_cli.evaluate.scoring import score_details


def test_official_val_2_sentences_match_the_store(shared_data):
    """ActivityNet-Captions' val_2.json sentences begin with a space, which the store drops: rows
    that carry the official text still match their queries (they scored as misses before)."""
    folder = shared_data / "activitynet"
    queries = read_annotations(folder, None).splits["test"]
    raw = json.loads((folder / "val_2.json").read_text(encoding="utf-8"))
    rows = [
        {"video": video, "query": sentence, "duration": entry["duration"],
         "moments": [[max(0.0, a), min(b, entry["duration"])]]}
        for video, entry in raw.items()
        for (a, b), sentence in zip(entry["timestamps"], entry["sentences"], strict=True)
        if min(b, entry["duration"]) > max(0.0, a)
    ]
    assert sum(r["query"] != r["query"].strip() for r in rows) > 10_000  # the text as published
    metrics, warnings, predicted = score_details("activitynet", queries, rows)
    assert predicted == len(queries) == len(rows)
    assert metrics["r@1,iou=0.5"] == 100.0 and metrics["miou"] == 100.0
    assert not [w for w in warnings if "not in this split" in w]


def test_rows_with_ids_match_exactly_and_rows_without_say_so():
    from fsan_cli.data.store import Query

    queries = [Query("v", "a  man  jumps", 20.0, [[0, 5]], {"annotation_id": 7}),
               Query("v", "a man jumps", 20.0, [[10, 20]], {"annotation_id": 8})]
    rows = [{"video": "v", "query": " a man jumps", "annotation_id": 8, "moments": [[10, 20]]},
            {"video": "v", "query": "a man jumps ", "annotation_id": 7, "moments": [[0, 5]]}]
    metrics, warnings, predicted = score_details("custom", queries, rows)
    assert (predicted, metrics["miou"], warnings[:1]) == (2, 100.0, ["2 predicted queries have "
                                                                     "fewer than 5 moments; R@5 "
                                                                     "counts only the moments given"])
    for r in rows:
        del r["annotation_id"]
    metrics, warnings, predicted = score_details("custom", queries, rows)
    assert (predicted, metrics["miou"]) == (2, 0.0)  # file order: each took the other's row
    assert warnings[0] == (
        "1 texts are asked more than once of one video with other times (first: video 'v', "
        "query 'a man jumps'): their rows were matched in file order; give each row the "
        "query's annotation_id to match it exactly")
