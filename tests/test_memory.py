"""fsan_cli/core/memory.py: the activation estimate against what autograd really keeps, the free-RAM
reading, and `fsan train` splitting batches that would not fit."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from fsan_cli.app import app
from fsan_cli.core import memory
from fsan_cli.core.settings import load_settings
from fsan_cli.train import loop as training
from fsan_cli.train import step
from models.fsan import FSAN
from tests.helpers import tiny_synthetic


def saved_bytes_per_sample(mc, tokens: int) -> float:
    """Bytes of the tensors autograd saves for one more sample of a training step (parameters
    and tensors seen twice not counted)."""
    torch.manual_seed(0)
    model = FSAN(mc, torch.randn(50, mc.word_dim)).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    features = torch.randn(4, mc.clips, mc.feature_dim)
    ids, vids = torch.randint(2, 50, (4, tokens)), torch.arange(4)

    def saved(batch: int) -> int:
        seen: dict[int, int] = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                seen[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            rows = torch.arange(batch)
            step.training_step(model, features, ids, vids, rows, (rows + 1) % 4, torch.device("cpu"))
        return sum(seen.values())

    return (saved(3) - saved(1)) / 2


@pytest.mark.parametrize(
    ("sets", "tokens"),
    [
        (["model.hidden=96", "model.heads=3", "model.layers=2", "data.clips=24",
          "loss.negative_video=false"], 12),
        (["model.hidden=48", "model.heads=4", "model.layers=3", "data.clips=8",
          "model.text_layers=2"], 20),
        (["model.hidden=64", "model.heads=8", "model.layers=1", "data.clips=48"], 5),
    ],
)
def test_estimate_matches_what_autograd_keeps(sets, tokens):
    """Configs the constants were not fitted on; the estimate is within 10%."""
    mc = load_settings("activitynet", overrides=[*sets, "model.align_dim=32"]).model_config(20, 30)
    measured = saved_bytes_per_sample(mc, tokens)
    assert memory.activation_bytes(mc, tokens) == pytest.approx(measured, rel=0.10)


def test_available_bytes_reads_meminfo_and_a_cgroup_limit(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24731708 kB\nMemAvailable:   10485760 kB\n")
    cgroup = tmp_path / "cg"
    assert memory.available_bytes(meminfo, cgroup) == 10 * 2**30  # no cgroup files
    cgroup.mkdir()
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text(f"{2**30}\n")
    assert memory.available_bytes(meminfo, cgroup) == 10 * 2**30  # v2 without a limit
    (cgroup / "memory.max").write_text(f"{4 * 2**30}\n")
    assert memory.available_bytes(meminfo, cgroup) == 3 * 2**30  # the container's limit binds
    assert memory.available_bytes(tmp_path / "absent", cgroup) is None


def test_fitting_piece():
    gb = 2**30
    assert memory.step_bytes(gb, 4) == 6 * gb  # 1.5 times what autograd saves
    assert memory.fitting_piece(128, gb // 10, 100 * gb) == 128  # fits whole
    assert memory.fitting_piece(128, gb, 10 * gb) == 5  # 0.8 of 10 GB holds 5 steps of 1.5 GB
    assert memory.fitting_piece(128, gb, 10 * gb, processes=2) == 2  # two processes share it
    assert memory.fitting_piece(128, gb, 0) == 1  # never below one sample


def test_train_splits_batches_that_would_not_fit(tmp_path, monkeypatch):
    tiny_synthetic(tmp_path)
    gb = 2**30
    monkeypatch.setattr(memory, "activation_bytes", lambda mc, tokens: gb)  # 1 GB per sample
    monkeypatch.setattr(memory, "available_bytes", lambda: 100 * gb)  # plenty: whole batches
    pieces: list[int] = []
    real = step.accumulate
    # the name the training loop calls (training imports it from fsan_cli.train.step)
    monkeypatch.setattr(training, "accumulate", lambda *a, **k: pieces.append(a[-1]) or real(*a, **k))
    args = ["--device", "cpu", "train", "--data-dir", str(tmp_path), "--no-test", "--batch-size", "16",
            *(f"--set={s}" for s in ("model.hidden=16", "model.layers=1", "model.heads=2",
                                     "model.align_dim=8", "train.epochs=1"))]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "whole")])
    assert result.exit_code == 0, result.stderr
    assert set(pieces) == {0} and "pieces of" not in result.stderr
    # 0.8 of 10 GB (less the tiny model's gradients and Adam moments) holds 5 samples of 1.5 GB
    monkeypatch.setattr(memory, "available_bytes", lambda: 10 * gb)
    pieces.clear()
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "split")])
    assert result.exit_code == 0, result.stderr
    assert ("A batch share of 16 needs about 24.0 GB for its forward and backward and 10.0 GB of RAM "
            "are free: training in pieces of 5 (train.micro_batch; the same gradient)") in result.stderr
    assert set(pieces) == {5}
    assert "micro_batch = 5" in (tmp_path / "split" / "config.toml").read_text()


def test_the_callers_settings_are_left_alone(tmp_path, monkeypatch):
    """The piece is recorded in the run folder, not written into the caller's settings (fsan
    ablate compares them with the folder's)."""
    from fsan_cli.data.store import load_store

    tiny_synthetic(tmp_path)
    monkeypatch.setattr(memory, "activation_bytes", lambda mc, tokens: 2**30)
    monkeypatch.setattr(memory, "available_bytes", lambda: 10 * 2**30)
    cfg = load_settings("synthetic", overrides=["model.hidden=16", "model.layers=1", "model.heads=2",
                                              "model.align_dim=8", "train.epochs=1"])
    training.train(cfg, load_store(tmp_path / "synthetic"), tmp_path / "run", torch.device("cpu"),
                 progress=False)
    assert cfg.train.micro_batch == 0
    assert "micro_batch = 5" in (tmp_path / "run" / "config.toml").read_text()
