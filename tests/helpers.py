"""What several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FSAN_SHARED_DATA", ROOT.parent / "shared" / "data"))
TINY_SIZES = {"train": 30, "val": 8, "test": 8}
# the tiny model the CLI and training tests train (seconds on one CPU thread)
TINY_MODEL = ["model.hidden=16", "model.layers=1", "model.heads=2", "model.align_dim=8"]


def set_args(settings: list[str]) -> list[str]:
    """A command line's `--set=KEY=VALUE` for each setting."""
    return [f"--set={s}" for s in settings]


def tiny_synthetic(root: Path) -> Path:
    """A tiny synthetic store under root/synthetic (videos per split: TINY_SIZES); its path."""
    from fsan_cli.data.synthetic import ensure_synthetic

    return ensure_synthetic(root, sizes=TINY_SIZES)


def train_tiny(data_root: Path, out: Path, overrides: list[str]):
    """A tiny synthetic store under data_root and a run trained on it into out, in this process on
    the CPU with the synthetic preset and `overrides`: (the store, out / "best.pt")."""
    import torch

    from fsan_cli.core.settings import load_settings
    from fsan_cli.data.store import load_store
    from fsan_cli.train import loop as training

    store = load_store(tiny_synthetic(data_root))
    training.train(load_settings("synthetic", overrides=overrides), store, out, torch.device("cpu"),
                   progress=False)
    return store, out / "best.pt"


def make_store(path: Path, dataset: str, splits: dict) -> None:
    """A tiny store of `splits` (Query lists) under path/dataset: zero features of 6 clips,
    a 3-word vocabulary; for scoring tests that need no model."""
    import numpy as np

    from fsan_cli.data.store import write_store

    videos = sorted({q.video: q.duration for qs in splits.values() for q in qs}.items())
    write_store(path / dataset, {"dataset": dataset}, np.zeros((len(videos), 6, 4), np.float32),
                [{"video": v, "duration": d, "rows": 6} for v, d in videos], ["<pad>", "<unk>", "a"],
                np.zeros((3, 4), np.float32), splits)


def run_evaluate(args: list[str], data_dir: Path, input: str | None = None):
    """`fsan evaluate ARGS` through typer's CliRunner on the stores under data_dir."""
    from typer.testing import CliRunner

    from fsan_cli.app import app

    env = {"FSAN_DATA_DIR": str(data_dir), "COLUMNS": "200", "NO_COLOR": "1"}
    return CliRunner().invoke(app, ["evaluate", *args], env=env, input=input)
