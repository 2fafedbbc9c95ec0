"""`fsan export VIDEO_ID`: one video of a prepared store written as a features file that `fsan
ground` answers from; exact output, exit codes, and nothing half-written."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fsan_cli.app import app
from fsan_cli.core.atomic import temp_files
from fsan_cli.data.store import load_store, write_store
from tests.helpers import tiny_synthetic

TINY = ["model.hidden=32", "model.layers=1", "model.heads=2", "model.align_dim=16", "train.epochs=1"]
VIDEO = "syn_test_00002"


def invoke(*args, input: str | None = None):
    result = CliRunner().invoke(app, ["--device", "cpu", *map(str, args)], input=input,
                                env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data folder holding the tiny synthetic store, its store, a tiny checkpoint trained on it)."""
    root = tmp_path_factory.mktemp("export")
    store = load_store(tiny_synthetic(root))
    args = [a for kv in TINY for a in ("--set", kv)]
    result = invoke("-q", "train", "--data-dir", root, "--out", root / "runs" / "tiny", *args)
    assert result.exit_code == 0, result.stderr
    return root, store, root / "runs" / "tiny" / "best.pt"


def said(store, out: Path) -> str:
    """The stderr of a plain export of VIDEO to `out`, built from the store."""
    row = store.videos[store.video_index[VIDEO]]
    queries = [q for q in store.split("test") if q.video == VIDEO]
    lines = [f"Wrote video {VIDEO} of {store.path} ({row['duration']:g} s, 32 clips of 128-d features) "
             f"to {out}; {len(queries)} annotated queries:"]
    lines += [f'  "{q.query}" (test: ' + ", ".join(f"{s:g}-{e:g} s" for s, e in q.times) + ")"
              for q in queries[:3]]
    return "\n".join(lines) + "\n"


def test_writes_the_video_and_ground_answers_from_it(trained, tmp_path):
    root, store, ckpt = trained
    out = tmp_path / "v.h5"
    result = invoke("export", VIDEO, "--data-dir", root, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{out}\n"
    assert result.stderr == said(store, out)
    with h5py.File(out, "r") as h5:
        np.testing.assert_array_equal(h5["features"][()], store.features[store.video_index[VIDEO]])
        assert h5.attrs["video"] == VIDEO
        assert h5.attrs["duration"] == store.videos[store.video_index[VIDEO]]["duration"]
        assert h5.attrs["dataset"] == "synthetic"
    assert temp_files(out) == []

    query = next(q for q in store.split("test") if q.video == VIDEO)
    result = invoke("ground", out, query.query, "--checkpoint", ckpt, "--json", "--precision", "fp32")
    assert result.exit_code == 0, result.stderr
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert (row["video"], row["query"], row["duration"]) == (VIDEO, query.query, query.duration)
    # the same answer as the store's own video, which `fsan evaluate` scores
    from fsan_cli.predict.predictor import Predictor

    (expected,) = Predictor.load(ckpt, torch.device("cpu"), "fp32").rows(store, [query], 5)
    assert [m[:2] for m in row["moments"]] == [m[:2] for m in expected["moments"]]


def test_default_file_is_named_by_the_video_and_json_lists_every_query(trained, tmp_path, monkeypatch):
    root, store, _ = trained
    monkeypatch.chdir(tmp_path)
    result = invoke("export", VIDEO, "--data-dir", root, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    done = json.loads(result.stdout)
    assert done["path"] == f"{VIDEO}.h5" and (tmp_path / f"{VIDEO}.h5").is_file()
    assert done["queries"] == [{"split": "test", "query": q.query, "times": q.times}
                               for q in store.split("test") if q.video == VIDEO]
    assert (done["video"], done["clips"], done["feature_dim"]) == (VIDEO, 32, 128)


def test_unknown_video_names_some_that_exist(trained, tmp_path):
    root, _, _ = trained
    result = invoke("export", "nope", "--data-dir", root, "--out", tmp_path / "v.h5")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (f"Error: video 'nope' is not in the prepared store {root / 'synthetic'} (46 videos). "
                             "Pass one of its ids, e.g. syn_test_00000, syn_test_00001, syn_test_00002.\n")
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_kept_without_overwrite(trained, tmp_path):
    root, store, _ = trained
    out = tmp_path / "v.h5"
    out.write_text("mine")
    result = invoke("export", VIDEO, "--data-dir", root, "--out", out)
    assert result.exit_code == 1
    assert result.stderr == f"Error: {out} already exists. Pass --overwrite to replace it, or choose another --out.\n"
    assert out.read_text() == "mine"
    result = invoke("export", VIDEO, "--data-dir", root, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert h5py.is_hdf5(out)


def test_a_failed_write_leaves_nothing(trained, tmp_path, monkeypatch):
    root, _, _ = trained
    out = tmp_path / "v.h5"

    def full_disk(fd, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("fsan_cli.core.atomic.os.fsync", full_disk)
    result = invoke("export", VIDEO, "--data-dir", root, "--out", out)
    assert result.exit_code == 1
    assert result.stderr == (f"Error: cannot write {out}: no space is left on the disk. "
                             "Free some space on it, or pass another --out FILE.h5.\n")
    assert list(tmp_path.iterdir()) == []


def test_a_store_projected_by_pca_is_refused(tmp_path):
    from fsan_cli.data.store import Query

    pca = {"mean": np.zeros(8, np.float32), "components": np.zeros((4, 8), np.float32)}
    write_store(tmp_path / "didemo", {"dataset": "didemo", "pca": {"dim": 4}}, np.zeros((1, 6, 4), np.float32),
                [{"video": "a.mov", "duration": 30.0, "rows": 6}], ["<pad>", "<unk>", "x"],
                np.zeros((3, 4), np.float32), {"test": [Query("a.mov", "x", 30.0, [[0.0, 5.0]])]}, pca)
    result = invoke("export", "a.mov", "-d", "didemo", "--data-dir", tmp_path, "--out", tmp_path / "a.h5")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: the prepared store {tmp_path / 'didemo'} holds features projected by PCA")
    assert not (tmp_path / "a.h5").exists()


def test_missing_folders_of_out_are_made(trained, tmp_path):
    root, store, _ = trained
    out = tmp_path / "videos" / "exported" / "v.h5"
    result = invoke("export", VIDEO, "--data-dir", root, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{out}\n" and h5py.is_hdf5(out)


def test_unknown_video_makes_no_folder(trained, tmp_path):
    root, _, _ = trained
    result = invoke("export", "nope", "--data-dir", root, "--out", tmp_path / "new" / "v.h5")
    assert result.exit_code == 1
    assert list(tmp_path.iterdir()) == []
