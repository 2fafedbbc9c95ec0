"""Interrupted training: the last complete checkpoint survives, and `fsan train --resume`
continues to the same weights and metrics log as an uninterrupted run (bit for bit on CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fsan_cli.app import app
from fsan_cli.core import checkpoint
from fsan_cli.core.settings import load_settings
from fsan_cli.train import loop as training
from fsan_cli.train.step import accumulate
from tests.helpers import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
TINY = [*TINY_MODEL, "train.epochs=2", "train.batch_size=16"]
CPU = torch.device("cpu")
EVERY = 3  # a mid-epoch last.pt every 3 steps; 30 videos give 7 steps an epoch


@pytest.fixture(scope="module")
def reference(tmp_path_factory, store) -> Path:
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("ref") / "run"
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    training.train(load_settings("synthetic", overrides=TINY), store, out, CPU, progress=False,
                   checkpoint_every=EVERY)
    torch.set_num_threads(old)
    return out


def metrics(run: Path) -> list[dict]:
    """metrics.jsonl without the one timing field."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "samples_per_s"} for line in lines]


def assert_same_run(a: Path, b: Path) -> None:
    for name in ("last.pt", "best.pt"):
        sa = checkpoint.load(a / name)["state_dict"]
        sb = checkpoint.load(b / name)["state_dict"]
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert metrics(a) == metrics(b)
    assert len(metrics(a)) == 2


def stop_at(monkeypatch, step: int) -> None:
    """KeyboardInterrupt just before optimizer step `step + 1`."""
    real = training.one_step

    def one_step(run, state, *args):
        if state.step == step:
            raise KeyboardInterrupt
        return real(run, state, *args)

    monkeypatch.setattr(training, "one_step", one_step)


@pytest.mark.parametrize("stop", [4, 7, 11], ids=["mid-epoch-1", "epoch-boundary", "mid-epoch-2"])
def test_resume_equals_uninterrupted(store, reference, tmp_path, monkeypatch, stop):
    cfg = load_settings("synthetic", overrides=TINY)
    out = tmp_path / "run"
    stop_at(monkeypatch, stop)
    with pytest.raises(training.TrainingInterrupted) as info:
        training.train(cfg, store, out, CPU, progress=False, checkpoint_every=EVERY)
    saved = stop // EVERY * EVERY if stop != 7 else 7  # the epoch end saves too
    assert (info.value.step, info.value.saved_step) == (stop, saved)
    assert checkpoint.load(out / "last.pt")["step"] == saved
    assert not list(out.glob(".*tmp*"))
    monkeypatch.undo()
    training.train(cfg, store, out, CPU, progress=False, resume=True, checkpoint_every=EVERY)
    assert_same_run(reference, out)


def test_interrupt_before_the_first_checkpoint_keeps_nothing(store, tmp_path, monkeypatch):
    stop_at(monkeypatch, 1)
    out = tmp_path / "run"
    with pytest.raises(training.TrainingInterrupted) as info:
        training.train(load_settings("synthetic", overrides=TINY), store, out, CPU, progress=False,
                       checkpoint_every=EVERY)
    assert info.value.saved_step is None
    assert not out.exists()


def test_an_interrupted_checkpoint_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save({"old": 1}, path)

    def broken(obj, fh):
        fh.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({"new": 2}, path)
    monkeypatch.undo()
    assert torch.load(path) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def cli(args: list[str]):
    return CliRunner().invoke(app, ["--device", "cpu", "-q", "train", *args])


def test_cli_ctrl_c_then_resume(data_dir, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["--data-dir", str(data_dir), "--out", str(out), "--no-test"]
    args += [f"--set={s}" for s in TINY]
    monkeypatch.setattr(training, "train", _with_every(training.train))
    stop_at(monkeypatch, 8)
    result = cli(args)
    assert result.exit_code == 130
    assert result.stderr == (
        f"Error: interrupted at step 8; the last checkpoint, {out / 'last.pt'} (step 7), is intact. "
        f"Continue with: fsan train --resume {out}\n"
    )
    monkeypatch.setattr(training, "one_step", _real_one_step)
    again = cli(args)  # the folder exists: no silent overwrite
    assert again.exit_code == 1 and "--resume to continue it" in again.stderr
    result = cli(["--resume", str(out), "--no-test"])
    assert result.exit_code == 0, result.stderr
    assert_same_run(reference, out)


_real_one_step = training.one_step


def test_out_of_memory_mid_run_then_resume_in_smaller_pieces(data_dir, reference, tmp_path, monkeypatch):
    """RAM runs out at step 9, after last.pt of step 7: the error says to resume with
    --micro-batch, and that resume finishes the run in pieces of that size."""
    out = tmp_path / "run"
    args = ["--data-dir", str(data_dir), "--out", str(out), "--no-test", *(f"--set={s}" for s in TINY)]
    monkeypatch.setattr(training, "train", _with_every(training.train))

    def one_step(run, state, *rest):
        if state.step == 8:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")
        return _real_one_step(run, state, *rest)

    monkeypatch.setattr(training, "one_step", one_step)
    result = cli(args)
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: RAM ran out at step 9 with 16 samples per forward/backward on each process "
        f"(train.batch_size=16, train.micro_batch=0); {out / 'last.pt'} (step 7) is kept. Continue "
        f"with: fsan train --resume {out} --micro-batch 8 (each batch goes through in pieces of 8 "
        "samples, with the same gradient and less memory).\n")
    monkeypatch.setattr(training, "one_step", _real_one_step)
    pieces: list[int] = []
    real = accumulate
    # the name the training loop calls (training imports it from fsan_cli.train.step)
    monkeypatch.setattr(training, "accumulate", lambda *a, **k: pieces.append(a[-1]) or real(*a, **k))
    result = CliRunner().invoke(app, ["--device", "cpu", "train", "--resume", str(out), "--no-test",
                                      "--micro-batch", "8"])
    assert result.exit_code == 0, result.stderr
    assert "--micro-batch 8 (the run had whole batches): the same gradients up to rounding, not bit for bit" in result.stderr
    assert len(pieces) == 7 and set(pieces) == {8}  # steps 8-14
    ours, theirs = metrics(out), metrics(reference)
    assert len(ours) == 2 and ours[0] == theirs[0]  # epoch 1 ran before
    assert ours[1]["loss"] == pytest.approx(theirs[1]["loss"], rel=0.05)


def _with_every(train):
    def wrapped(*args, **kwargs):
        kwargs.setdefault("checkpoint_every", EVERY)
        return train(*args, **kwargs)

    return wrapped


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--epochs", "3"], "--epochs cannot go with it"),
        (["--set", "train.lr=1"], "--set cannot go with it"),
        (["--overwrite"], "--overwrite cannot go with it"),
    ],
)
def test_resume_refuses_new_settings(reference, extra, message):
    result = cli(["--resume", str(reference), *extra])
    assert result.exit_code == 2  # bad usage
    assert message in result.stderr and result.stderr.startswith("Usage: fsan train [OPTIONS]\n")


def test_resume_a_finished_run_changes_nothing(reference, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = (out / "last.pt").read_bytes()
    result = cli(["--resume", str(out), "--no-test"])
    assert result.exit_code == 0, result.stderr
    assert (out / "last.pt").read_bytes() == before
    assert metrics(out) == metrics(reference)


def test_sigterm_keeps_a_loadable_checkpoint(data_dir, reference, tmp_path):
    """A real process, killed with SIGTERM once it has written a checkpoint: exit 130, the
    resume line, no traceback, no temporary files."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "fsan_cli", "--device", "cpu", "-q", "train", "--data-dir",
           str(data_dir), "--out", str(out), "--no-test", *[f"--set={s}" for s in TINY],
           "--epochs", "200"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 60
    while not (out / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "is intact. Continue with: fsan train --resume" in err
    assert "Traceback" not in err
    model, ckpt = checkpoint.load_model(out / "last.pt")
    assert ckpt["step"] >= 7 and not list(out.glob(".*tmp*"))
