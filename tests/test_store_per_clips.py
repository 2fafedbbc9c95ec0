"""One prepared store per N_v: another `data.clips` never rebuilds the store earlier runs were
trained on, so they still evaluate and resume; a run whose prepared data changed N_v since is
told how to resume (never with an option --resume refuses)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from fsan_cli.app import app
from fsan_cli.data import synthetic
from fsan_cli.data.features import pool_clips
from fsan_cli.data.store import load_store, write_store
from fsan_cli.data.synthetic import ensure_synthetic
from tests.helpers import TINY_SIZES, tiny_synthetic

SETS = [f"--set={s}" for s in ("model.hidden=16", "model.layers=1", "model.heads=2",
                               "model.align_dim=8", "train.epochs=1")]


def cli(*args: str):
    return CliRunner().invoke(app, ["--device", "cpu", "-q", *args])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_another_clips_gets_its_own_store(tmp_path):
    shared = tiny_synthetic(tmp_path)
    assert shared == tmp_path / "synthetic"
    before = snapshot(shared)
    other = ensure_synthetic(tmp_path, clips=16, sizes=TINY_SIZES)
    assert other == tmp_path / "synthetic-clips16"
    assert load_store(other).clips == 16 and load_store(shared).clips == 32
    assert snapshot(shared) == before
    assert ensure_synthetic(tmp_path, clips=16) == other  # found again, not generated
    assert ensure_synthetic(tmp_path) == shared


def test_earlier_runs_still_evaluate_and_resume_after_a_run_with_other_clips(tmp_path):
    data = tmp_path / "data"
    tiny_synthetic(data)
    ensure_synthetic(data, clips=16, sizes=TINY_SIZES)
    first, second = tmp_path / "first", tmp_path / "second"
    assert cli("train", "--data-dir", str(data), "--out", str(first), "--no-test", *SETS).exit_code == 0
    before = snapshot(data / "synthetic")
    result = cli("train", "--data-dir", str(data), "--out", str(second), "--no-test", *SETS,
                 "--set", "data.clips=16")
    assert result.exit_code == 0, result.stderr
    assert snapshot(data / "synthetic") == before
    assert json.loads((second / "run.json").read_text())["store"] == str((data / "synthetic-clips16").resolve())
    for run in (first, second):
        scored = cli("evaluate", "--data-dir", str(data), "--checkpoint", str(run / "best.pt"), "--json")
        assert scored.exit_code == 0, scored.stderr
        resumed = cli("train", "--resume", str(run), "--data-dir", str(data), "--no-test")
        assert resumed.exit_code == 0, resumed.stderr


def _custom(data: Path, source, clips: int) -> Path:
    """source's videos as data/custom, pooled to `clips` clips."""
    feats = np.stack([pool_clips(np.asarray(f), clips) for f in source.features])
    write_store(data / "custom", {"dataset": "custom", "normalize": True}, feats, source.videos,
                source.vocab, source.vectors, source.splits)
    return data / "custom"


def test_resume_after_the_data_was_prepared_with_other_clips_says_how(tmp_path):
    source = load_store(tiny_synthetic(tmp_path / "src"))
    data, run = tmp_path / "data", tmp_path / "run"
    _custom(data, source, 32)
    result = cli("train", "--dataset", "custom", "--data-dir", str(data), "--out", str(run), "--no-test",
                 *SETS, "--set", "data.clips=32")
    assert result.exit_code == 0, result.stderr
    _custom(data, source, 16)  # prepared again with --clips 16
    result = cli("train", "--resume", str(run), "--data-dir", str(data), "--no-test")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: the run in {run} trained on 32 clips per video, but the data at {data / 'custom'} now "
        "has 16 (prepared again since). Prepare the data again with --clips 32 into another folder "
        "(`fsan prepare --dataset custom --clips 32 --data-dir DIR ...`), then resume with --data-dir DIR.\n")
    again = tmp_path / "again"
    _custom(again, source, 32)
    result = cli("train", "--resume", str(run), "--data-dir", str(again), "--no-test")
    assert result.exit_code == 0, result.stderr


def test_resume_of_a_synthetic_run_whose_store_was_rebuilt_by_an_older_fsan(tmp_path, monkeypatch):
    """An older fsan regenerated data/synthetic in place for another data.clips: the run's own
    N_v is generated beside it, and the run resumes."""
    monkeypatch.setattr(synthetic, "DEFAULT_SIZES", TINY_SIZES)  # what the CLI generates
    data, run = tmp_path / "data", tmp_path / "run"
    assert cli("train", "--data-dir", str(data), "--out", str(run), "--no-test", *SETS).exit_code == 0
    source = load_store(data / "synthetic")
    feats = np.stack([pool_clips(np.asarray(f), 16) for f in source.features])
    write_store(data / "synthetic", {**source.manifest, "clips": 16}, feats, source.videos,
                source.vocab, source.vectors, source.splits)
    result = cli("train", "--resume", str(run), "--data-dir", str(data), "--no-test")
    assert result.exit_code == 0, result.stderr
    assert load_store(data / "synthetic").clips == 16  # left as it was
    assert load_store(data / "synthetic-clips32").clips == 32
