"""Checkpoints: loading one runs no code, versions are checked, version 1 files still load."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fsan_cli.app import app
from fsan_cli.core import checkpoint
from fsan_cli.core.errors import FsanError
from fsan_cli.core.settings import load_settings
from fsan_cli.data.store import load_store
from fsan_cli.data.synthetic import ensure_synthetic
from fsan_cli.train.loop import train

SIZES = {"train": 40, "val": 8, "test": 8}
TINY = ["model.hidden=16", "model.layers=1", "model.heads=2", "model.align_dim=8", "train.epochs=1",
        "train.batch_size=16", "data.clips=8"]


class Payload:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    store = load_store(ensure_synthetic(root / "data", sizes=SIZES, clips=8))
    run = root / "runs" / "tiny"
    train(load_settings("synthetic", overrides=TINY), store, run, torch.device("cpu"), progress=False)
    video = root / "v.h5"
    import h5py

    with h5py.File(video, "w") as h5:
        h5["features"] = store.features[0]
        h5.attrs["duration"] = 30.0
    return {"root": root, "store": store, "run": run, "video": video}


def evil_copy(src: Path, dst: Path, marker: Path) -> Path:
    ckpt = torch.load(src, weights_only=True)
    ckpt["extra"] = Payload(marker)
    torch.save(ckpt, dst)
    return dst


def invoke(args, cwd: Path):
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, args)
    finally:
        os.chdir(old)


@pytest.mark.parametrize("command", ["ground", "ground-newest", "evaluate", "resume"])
def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(world, tmp_path, command):
    marker = tmp_path / "pwned"
    data = str(world["root"] / "data")
    if command == "resume":
        run = tmp_path / "run"
        run.mkdir()
        for name in ("config.toml", "run.json", "metrics.jsonl"):
            (run / name).write_bytes((world["run"] / name).read_bytes())
        evil_copy(world["run"] / "last.pt", run / "last.pt", marker)
        args = ["train", "--resume", str(run), "--data-dir", data]
    elif command == "ground-newest":  # a bare `fsan ground` picks runs/*/best.pt by itself
        (tmp_path / "runs" / "x").mkdir(parents=True)
        evil_copy(world["run"] / "best.pt", tmp_path / "runs" / "x" / "best.pt", marker)
        args = ["ground", str(world["video"]), "a person opens the door"]
    else:
        evil = evil_copy(world["run"] / "best.pt", tmp_path / "evil.pt", marker)
        args = (["ground", str(world["video"]), "a person opens the door", "--checkpoint", str(evil)]
                if command == "ground" else
                ["evaluate", "--data-dir", data, "--checkpoint", str(evil)])
    result = invoke(args, tmp_path)
    assert not marker.exists()
    assert result.exit_code == 1
    assert "holds a posix.system object, and loading it would run code" in result.stderr


def test_checkpoints_hold_only_tensors_and_plain_values(world):
    for name in ("best.pt", "last.pt"):
        ckpt = checkpoint.load(world["run"] / name)  # weights_only=True
        assert ckpt["version"] == checkpoint.VERSION
    assert isinstance(ckpt["resume"]["numpy_rng"]["keys"], torch.Tensor)


def test_an_unknown_version_is_refused_with_a_clear_error(world, tmp_path):
    ckpt = checkpoint.load(world["run"] / "best.pt")
    ckpt["version"] = 99
    torch.save(ckpt, tmp_path / "future.pt")
    with pytest.raises(FsanError) as info:
        checkpoint.load(tmp_path / "future.pt")
    assert str(info.value) == (
        f"{tmp_path / 'future.pt'} is an fsan checkpoint of version 99; this fsan reads versions "
        "1 to 2. Upgrade fsan (pip install -U fsan), or train again.")


def test_a_version_1_checkpoint_loads_with_its_old_setting_names(world, tmp_path):
    ckpt = checkpoint.load(world["run"] / "best.pt")
    ckpt["version"] = 1
    align, loss = ckpt["settings"]["align"], ckpt["settings"]["loss"]
    align["outer"] = align.pop("outer_form")
    for k in ("matching", "inner", "outer"):
        loss[k] = loss.pop(f"w_{k}")
    mc = ckpt["model_config"]
    mc["outer"], mc["sap_losses"] = mc.pop("outer_form"), mc.pop("sap")
    torch.save(ckpt, tmp_path / "v1.pt")
    model, old = checkpoint.load_model(tmp_path / "v1.pt")
    assert old["version"] == checkpoint.VERSION
    assert checkpoint.settings_of(old).loss.w_matching == loss["matching"]
    assert model.cfg.outer_form == mc["outer"] and model.cfg.sap is mc["sap_losses"]


def test_a_folder_as_checkpoint_is_named_as_a_folder(tmp_path):
    with pytest.raises(FsanError, match="is a folder"):
        checkpoint.load(tmp_path)
