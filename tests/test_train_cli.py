"""`fsan train` through the CLI: the run folder, --json, --overwrite, --compile."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from fsan_cli.app import app
from fsan_cli.core import checkpoint
from fsan_cli.train import loop as training
from fsan_cli.train import resident, step
from tests.helpers import TINY_MODEL, set_args

SETS = set_args([*TINY_MODEL, "train.epochs=1"])


def train(*args: str):
    return CliRunner().invoke(app, ["--device", "cpu", "-q", "train", *args])


def test_run_folder_and_json_summary(data_dir, tmp_path):
    out = tmp_path / "run"
    result = train("--data-dir", str(data_dir), "--out", str(out), "--no-test", "--json", *SETS)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["best_epoch"] == 1 and summary["steps"] == 2 and summary["out"] == str(out)
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt", "config.toml", "last.pt", "metrics.jsonl", "run.json"]
    info = json.loads((out / "run.json").read_text())
    assert info == {"dataset": "synthetic", "store": str((data_dir / "synthetic").resolve())}
    last = checkpoint.load(out / "last.pt")
    assert last["resume"]["epoch"] == 2 and last["step"] == 2  # finished: nothing left to run


def test_overwrite_replaces_every_file_of_the_old_run(data_dir, tmp_path):
    out = tmp_path / "run"
    assert train("--data-dir", str(data_dir), "--out", str(out), "--no-test", *SETS).exit_code == 0
    (out / "notes.txt").write_text("mine")
    result = train("--data-dir", str(data_dir), "--out", str(out), "--no-test", "--overwrite",
                   *SETS, "--set", "train.epochs=2")
    assert result.exit_code == 0, result.stderr
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "notes.txt").read_text() == "mine"  # not ours: left alone


def test_compile_wraps_the_training_pass(data_dir, tmp_path, monkeypatch):
    compiled = []

    def fake_compile(module, mode="default"):
        compiled.append((type(module).__name__, mode))
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    result = train("--data-dir", str(data_dir), "--out", str(tmp_path / "r"), "--no-test",
                   "--compile", *SETS)
    assert result.exit_code == 0, result.stderr
    result = train("--data-dir", str(data_dir), "--out", str(tmp_path / "g"), "--no-test",
                   "--compile", "--set", "train.compile_mode=reduce-overhead", *SETS)
    assert result.exit_code == 0, result.stderr
    assert compiled == [("TrainingPass", "default"), ("TrainingPass", "reduce-overhead")]


def test_training_step_keeps_its_signature_for_benchmarks():
    """benchmarks/speed/plain_reference.py calls training_step(model, features, tokens, vids, idx, neg, device)."""
    from models.config import FSANConfig
    from models.fsan import FSAN

    cfg = FSANConfig(word_dim=4, feature_dim=6, clips=4, hidden=8, layers=1, heads=2, align_dim=4)
    model = FSAN(cfg, torch.randn(10, 4))
    features, tokens = torch.randn(3, 4, 6), torch.randint(1, 10, (5, 3))
    vids, idx = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([0, 1, 2])
    losses = step.training_step(model, features, tokens, vids, idx, idx.flip(0), torch.device("cpu"))
    assert torch.isfinite(losses.total)
    losses.total.backward()


def test_cpu_step_trims_padding_exactly():
    """On a CPU the step cuts token columns that are padding in the whole batch; the losses
    are those of the untrimmed batch (padding is masked everywhere)."""
    from models.config import FSANConfig
    from models.fsan import FSAN

    torch.manual_seed(0)
    cfg = FSANConfig(word_dim=4, feature_dim=6, clips=5, hidden=8, layers=2, heads=2, align_dim=4,
                     dropout=0.0, max_tokens=9, negative_video=True)
    model = FSAN(cfg, torch.randn(10, 4))
    features = torch.randn(3, 5, 6)
    tokens = torch.zeros(6, 9, dtype=torch.long)  # longest query 4 of 9 columns
    for i, n in enumerate([2, 4, 3, 1, 4, 2]):
        tokens[i, :n] = torch.randint(1, 10, (n,))
    vids = torch.tensor([0, 1, 2, 0, 1, 2])
    idx, neg = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 0, 1])
    assert step.trim_padding(tokens[idx]).shape == (4, 4)
    trimmed = step.training_step(model, features, tokens, vids, idx, neg, torch.device("cpu"))
    full = step.TrainingPass(model, False)(
        features[vids[idx]], tokens[idx], tokens[neg], vids[neg] != vids[idx], features[vids[neg]],
        torch.tensor(1.0))  # fmt: skip
    for a, b in zip(trimmed, full, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("micro", [1, 3, 5])
def test_micro_batches_give_the_whole_batch_gradient(micro):
    """train.micro_batch splits a batch into pieces whose weighted backward passes add up to the
    whole batch's gradient and losses (every negative here comes from another video, so eq. 6's
    average over valid negatives splits exactly)."""
    from models.config import FSANConfig
    from models.fsan import FSAN

    torch.manual_seed(0)
    cfg = FSANConfig(word_dim=4, feature_dim=6, clips=5, hidden=8, layers=2, heads=2, align_dim=4,
                     dropout=0.0, max_tokens=6, negative_video=True)
    model = FSAN(cfg, torch.randn(10, 4))
    tokens = torch.zeros(8, 6, dtype=torch.long)
    for i, n in enumerate([2, 6, 3, 1, 4, 2, 5, 3]):
        tokens[i, :n] = torch.randint(1, 10, (n,))
    vids = torch.arange(8) % 4
    data = resident.TrainingData(torch.randn(4, 5, 6), tokens, vids)
    idx, neg = torch.tensor([0, 1, 2, 3, 4, 5, 6]), torch.tensor([1, 2, 3, 4, 5, 6, 7])
    assert bool((vids[idx] != vids[neg]).all())
    runner, cpu = step.TrainingPass(model, False), torch.device("cpu")

    def grads(size):
        model.zero_grad(set_to_none=True)
        parts = step.accumulate(runner, model, data, idx, neg, cpu, 0.5, 2.0, size)
        return parts, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    whole, whole_grads = grads(0)
    parts, piece_grads = grads(micro)
    torch.testing.assert_close(parts, whole, atol=1e-6, rtol=1e-5)
    assert len(piece_grads) == len(whole_grads) > 10
    for a, b in zip(piece_grads, whole_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_micro_batch_option_is_recorded_and_trains_like_whole_batches(data_dir, tmp_path, monkeypatch):
    sizes: list[int] = []
    real = step.training_step

    def spy(model, features, tokens, vids, idx, *args, **kwargs):
        sizes.append(idx.numel())
        return real(model, features, tokens, vids, idx, *args, **kwargs)

    monkeypatch.setattr(step, "training_step", spy)
    runs = {}
    for name, extra in (("whole", []), ("pieces", ["--micro-batch", "3"])):
        out, sizes[:] = tmp_path / name, []
        result = train("--data-dir", str(data_dir), "--out", str(out), "--no-test", *SETS,
                       "--set", "model.dropout=0", *extra)
        assert result.exit_code == 0, result.stderr
        runs[name] = (list(sizes), json.loads((out / "metrics.jsonl").read_text().splitlines()[-1]))
    (whole, whole_log), (pieces, pieces_log) = runs["whole"], runs["pieces"]
    assert max(whole) > 3 and max(pieces) == 3 and sum(pieces) == sum(whole)
    assert "micro_batch = 3" in (tmp_path / "pieces" / "config.toml").read_text()
    assert pieces_log["loss"] == pytest.approx(whole_log["loss"], rel=0.05)


def test_negative_micro_batch_is_refused(data_dir, tmp_path):
    result = train("--data-dir", str(data_dir), "--out", str(tmp_path / "r"), *SETS, "--micro-batch", "-1")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip() == (
        "Error: train.micro_batch must be at least 0, got -1. Pass a value at least 0.")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
], ids=["cpu", "cuda"])
def test_out_of_memory_says_how_to_split_batches(data_dir, tmp_path, monkeypatch, error):
    def full(*args, **kwargs):
        raise error

    monkeypatch.setattr(training, "accumulate", full)
    out = tmp_path / "r"
    result = train("--data-dir", str(data_dir), "--out", str(out), *SETS, "--batch-size", "6")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (
        "Error: RAM ran out at step 1 with 6 samples per forward/backward on each process "
        "(train.batch_size=6, train.micro_batch=0). Train again with --micro-batch 3: each batch goes "
        "through in pieces of 3 samples, with the same gradient and less memory.\n")
    assert not out.exists()  # nothing was saved: no half run left behind


def test_evaluate_defaults_to_the_newest_run_of_the_dataset(data_dir, tmp_path, monkeypatch):
    """`fsan evaluate --metric miou` after `fsan train` scores that run, and says so on stderr;
    a newer run of another dataset is not taken."""
    monkeypatch.chdir(tmp_path)
    assert train("--data-dir", str(data_dir), "--out", "runs/mine", "--no-test", *SETS).exit_code == 0
    other = tmp_path / "runs" / "other"
    other.mkdir()
    (other / "best.pt").write_bytes((tmp_path / "runs" / "mine" / "best.pt").read_bytes())
    (other / "run.json").write_text(json.dumps({"dataset": "charades", "store": "x"}))
    env = {"FSAN_DATA_DIR": str(data_dir)}
    default = CliRunner().invoke(app, ["--device", "cpu", "evaluate", "--metric", "miou"], env=env)
    given = CliRunner().invoke(app, ["--device", "cpu", "evaluate", "--metric", "miou",
                                     "--checkpoint", "runs/mine/best.pt"], env=env)
    assert default.exit_code == 0, default.stderr
    assert default.stdout == given.stdout and float(default.stdout) > 0
    assert ("Checkpoint: runs/mine/best.pt (the newest run of synthetic; --checkpoint, "
            "--predictions or --baseline picks another)") in default.stderr
