"""The benchmark scripts' own logic (not the installed package: tests/ covers fsan_cli and models).
Collected by a bare `pytest` from the repository root (pyproject.toml's testpaths)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from benchmarks.quality import sizes


def test_sizes_table_joins_the_latest_row_of_each_seed_from_separate_invocations(tmp_path):
    def row(seed, miou, tag="1500", size="base", record="a"):
        split = {"r@1,iou=0.1": 80.0, "r@1,iou=0.3": 60.0, "r@1,iou=0.5": 40.0, "miou": miou,
                 "without_span_prior": {"r@1,iou=0.1": 70.0, "r@1,iou=0.3": 50.0, "r@1,iou=0.5": 30.0, "miou": miou - 5}}
        base = {"r@1,iou=0.1": 82.3, "r@1,iou=0.3": 45.9, "r@1,iou=0.5": 21.6, "miou": 34.4}
        return {"dataset": "activitynet", "data_size": "small", "size": size, "seed": seed, "tag": tag,
                "train_s": 1.0, "best_epoch": 3, "epochs": 4, "val": split, "test": split,
                "baselines": {"prior": {"test": base}}, "record": {"command": record}}

    rows = [row(0, 10.0), row(1, 99.0, tag=""), row(1, 44.0), row(0, 42.0, record="b"), row(2, 99.0, size="small")]
    (tmp_path / "sizes-activitynet.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = SimpleNamespace(work=tmp_path, dataset="activitynet", size="base", tag="1500", data_size="small", seeds="0,1")
    out = sizes.table_of(args)
    assert "| FSAN | test | 80.0 ± 0.0 | 60.0 ± 0.0 | 40.0 ± 0.0 | 43.0 ± 1.4 | 2 |" in out
    assert "| FSAN without span prior | test | 70.0 ± 0.0 | 50.0 ± 0.0 | 30.0 ± 0.0 | 38.0 ± 1.4 | 2 |" in out
    assert '# record: {"command": "a"}' in out and '# record: {"command": "b"}' in out
    assert "| prior | test | 82.3 | 45.9 | 21.6 | 34.4 | |" in out
    with pytest.raises(SystemExit, match="no rows for seed\\(s\\) 2 of size base"):
        sizes.table_of(SimpleNamespace(**{**vars(args), "seeds": "0,2"}))
