"""`fsan evaluate --save-predictions FILE`: never onto a file the command reads, an existing file
only with --overwrite, and atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.test_evaluate_cli import PREDICTIONS, make_store, run

SCORED = ["--metric", "miou"]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    from tests.test_evaluate_cli import TEST, TRAIN

    make_store(tmp_path, "synthetic", {"train": TRAIN, "val": TEST[:2], "test": TEST})
    return tmp_path


def _preds(path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in PREDICTIONS), encoding="utf-8")
    return path


def test_existing_file_is_refused_without_overwrite(data_dir, tmp_path):
    out = tmp_path / "saved.jsonl"
    out.write_text("mine\n")
    r = run(["--baseline", "prior", "--save-predictions", str(out), *SCORED], data_dir)
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr == (f"Error: --save-predictions {out} already exists. Pass --overwrite to "
                        "replace it, or choose another file.\n")
    assert out.read_text() == "mine\n"
    r = run(["--baseline", "prior", "--save-predictions", str(out), "--overwrite", *SCORED], data_dir)
    assert r.exit_code == 0, r.stderr
    assert len(out.read_text().splitlines()) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved.jsonl", "synthetic"]  # no temp file


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_the_predictions_being_read_are_never_replaced(data_dir, tmp_path, overwrite):
    preds = _preds(tmp_path / "preds.jsonl")
    before = preds.read_bytes()
    link = tmp_path / "link.jsonl"
    os.symlink(preds, link)
    for target in (preds, link):
        r = run(["--predictions", str(preds), "--save-predictions", str(target), *overwrite, *SCORED],
                data_dir)
        assert r.exit_code == 1 and r.stdout == ""
        assert r.stderr == (f"Error: --save-predictions {target} is the --predictions file, which "
                            "this command reads. Choose another file for --save-predictions.\n")
    assert preds.read_bytes() == before and link.is_symlink()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny synthetic store (root/synthetic) and a run trained on it (root/runs/synthetic-1)."""
    from tests.helpers import TINY_MODEL, train_tiny

    root = tmp_path_factory.mktemp("savepred")
    train_tiny(root, root / "runs" / "synthetic-1", [*TINY_MODEL, "train.epochs=1"])
    return root


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_the_checkpoint_being_read_is_never_replaced(trained, overwrite):
    ckpt = trained / "runs" / "synthetic-1" / "best.pt"
    before = ckpt.read_bytes()
    r = run(["--checkpoint", str(ckpt), "--save-predictions", str(ckpt), *overwrite, *SCORED], trained)
    assert r.exit_code == 1, r.stderr
    assert r.stderr.endswith(f"Error: --save-predictions {ckpt} is the --checkpoint, which this "
                             "command reads. Choose another file for --save-predictions.\n")
    assert ckpt.read_bytes() == before


def test_the_newest_run_found_by_itself_is_never_replaced(trained, monkeypatch):
    ckpt = trained / "runs" / "synthetic-1" / "best.pt"
    before = ckpt.read_bytes()
    monkeypatch.chdir(trained)
    r = run(["--save-predictions", "runs/synthetic-1/best.pt", "--overwrite", *SCORED], trained)
    assert r.exit_code == 1
    assert "Error: --save-predictions runs/synthetic-1/best.pt is the --checkpoint" in r.stderr
    assert ckpt.read_bytes() == before


def test_a_file_of_the_store_is_never_replaced(data_dir):
    test_split = data_dir / "synthetic" / "test.jsonl"
    before = test_split.read_bytes()
    r = run(["--baseline", "random", "--save-predictions", str(test_split), "--overwrite", *SCORED],
            data_dir)
    assert r.exit_code == 1
    assert f"is test.jsonl of the prepared store at {data_dir / 'synthetic'}" in r.stderr
    assert test_split.read_bytes() == before


def test_missing_folders_are_made(data_dir, tmp_path):
    out = tmp_path / "predictions" / "prior" / "saved.jsonl"
    r = run(["--baseline", "prior", "--save-predictions", str(out), *SCORED], data_dir)
    assert r.exit_code == 0, r.stderr
    assert len(out.read_text().splitlines()) == 4
