"""train.cuda_graph: the whole optimizer step captured as one CUDA graph and replayed.

The CUDA tests run where a GPU is (benchmarks/tools/gpu_check.sh runs them on a lent one); on a CPU
only the settings' checks and the learning-rate plumbing run."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from fsan_cli.app import app
from fsan_cli.core.settings import TrainSettings, load_settings
from fsan_cli.train import loop as training
from fsan_cli.train import resident
from fsan_cli.train.cuda_graph import use_cuda_graph
from fsan_cli.train.distributed import Dist
from fsan_cli.train.step import TrainingPass, make_optimizer, ready_optimizer, set_lr
from models.fsan import FSAN

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SMALL = ["model.hidden=32", "model.layers=1", "model.heads=2", "model.align_dim=16",
         "data.clips=16", "train.batch_size=8"]


def test_cpu_training_is_never_captured(data_dir, tmp_path, monkeypatch):
    """train.cuda_graph is on by default and means "where it can be": a CPU run trains eagerly."""
    monkeypatch.setattr(training, "CapturedStep", None)  # calling it would fail the run
    result = CliRunner().invoke(app, [
        "--device", "cpu", "-q", "train", "--data-dir", str(data_dir), "--out", str(tmp_path / "r"),
        "--no-test", "--set", "model.hidden=16", "--set", "model.layers=1", "--set", "model.heads=2",
        "--set", "train.epochs=1"])
    assert result.exit_code == 0, result.stderr
    assert "cuda_graph = true" in (tmp_path / "r" / "config.toml").read_text()


def test_when_the_step_is_captured():
    gpu, cpu, one = torch.device("cuda", 0), torch.device("cpu"), Dist()
    on, off = TrainSettings(cuda_graph=True), TrainSettings(cuda_graph=False)
    assert use_cuda_graph(TrainSettings(), gpu, False, one) is True  # the default
    assert use_cuda_graph(on, gpu, False, one) is True
    assert use_cuda_graph(off, gpu, False, one) is False
    assert use_cuda_graph(on, cpu, False, one) is False
    assert use_cuda_graph(on, gpu, True, one) is False  # --compile
    assert use_cuda_graph(on, gpu, False, Dist(rank=0, world=2)) is False


def test_learning_rate_as_tensor_is_filled_in_place():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.5)
    ready_optimizer(opt, torch.device("cpu"), True)
    lr = opt.param_groups[0]["lr"]
    assert torch.is_tensor(lr) and float(lr) == 0.5
    set_lr(opt, 0.25)
    assert opt.param_groups[0]["lr"] is lr and float(lr) == 0.25  # the tensor a graph read
    ready_optimizer(opt, torch.device("cpu"), False)  # what a resumed eager run needs
    assert opt.param_groups[0]["lr"] == 0.25 and not torch.is_tensor(opt.param_groups[0]["lr"])
    set_lr(opt, 0.125)
    assert opt.param_groups[0]["lr"] == 0.125


def test_a_restored_eager_optimizer_is_made_capturable():
    """last.pt of a run that was not captured (a CPU run, or train.cuda_graph=false) holds
    capturable=False and float lr: resumed with capture, both must change."""
    model = torch.nn.Linear(3, 2)
    eager = torch.optim.AdamW(model.parameters(), lr=0.5)
    model(torch.randn(4, 3)).sum().backward()
    eager.step()
    opt = torch.optim.AdamW(model.parameters(), lr=0.5)
    opt.load_state_dict(eager.state_dict())
    ready_optimizer(opt, torch.device("cpu"), True)
    assert all(g["capturable"] and torch.is_tensor(g["lr"]) for g in opt.param_groups)
    assert all(st["step"].dtype == torch.float32 for st in opt.state.values())
    ready_optimizer(opt, torch.device("cpu"), False)
    assert not any(g["capturable"] or torch.is_tensor(g["lr"]) for g in opt.param_groups)


def small_run(dropout: float, captured: bool, seed: int = 0) -> training.Run:
    device = torch.device("cuda", 0)
    cfg = load_settings("activitynet", overrides=SMALL + [f"model.dropout={dropout}"])
    torch.manual_seed(seed)
    mc = cfg.model_config(12, 20)
    model = FSAN(mc, torch.randn(50, 12)).to(device).train()
    g = torch.Generator().manual_seed(1)
    features = torch.randn(10, mc.clips, 20, generator=g).to(device, torch.bfloat16)
    lengths = torch.randint(2, 9, (40,), generator=g)
    tokens = torch.randint(2, 50, (40, 8), generator=g)
    tokens = tokens.masked_fill(torch.arange(8)[None] >= lengths[:, None], 0).to(device)
    vids = torch.randint(0, 10, (40,), generator=g).to(device)
    data = resident.TrainingData(features, tokens, vids, [])
    opt = make_optimizer(model, cfg.train, device, captured)
    runner = TrainingPass(model, False)  # fp32: the two runs compare closely
    run = training.Run(model, runner, opt, None, data, cfg, None, None, device, Dist())
    if captured:
        training.capture_steps(run)
    return run


def batches(n: int, size: int = 8):
    g = torch.Generator().manual_seed(2)
    for k in range(n):
        b = 5 if k == n - 2 else size  # an epoch's smaller last batch: eager between replays
        yield (torch.randint(0, 40, (b,), generator=g).cuda(), torch.randint(0, 40, (b,), generator=g).cuda(),
               1e-3 if k % 2 else 1e-5, min(1.0, k / 4))  # a baked lr would be off 100x


@cuda
def test_replayed_steps_follow_eager_steps():
    """Same losses and parameters as eager steps, with the learning rate and the SAP scale
    changing every step (read from tensors at each replay, not baked into the graph)."""
    eager, graphed = small_run(0.0, False), small_run(0.0, True)
    for idx, neg, lr, sap in batches(9):
        set_lr(eager.opt, lr)
        set_lr(graphed.opt, lr)
        a = training.step_body(eager, idx, neg, sap)
        b = graphed.captured(idx, neg, sap)
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert graphed.captured.graph is not None
    for p, q in zip(eager.model.parameters(), graphed.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-4)  # a step moves them by ~1e-3


@cuda
def test_replays_draw_new_dropout_masks():
    run = small_run(0.3, True)
    idx, neg = torch.arange(8).cuda(), torch.arange(8, 16).cuda()
    set_lr(run.opt, 0.0)
    before = [p.detach().clone() for p in run.model.parameters()]
    losses = [run.captured(idx, neg, 1.0) for _ in range(6)]  # 3 eager, then captured, replays
    assert run.captured.graph is not None
    assert len({round(float(x[0]), 6) for x in losses[3:]}) == 3  # other masks every replay
    for p, q in zip(before, run.model.parameters(), strict=True):
        torch.testing.assert_close(q, p)  # lr 0: nothing moved


@cuda
def test_fsan_train_with_cuda_graph(data_dir, tmp_path):
    runs = {}
    for name, sets in (("eager", ["--set", "train.cuda_graph=false"]), ("graph", [])):
        result = CliRunner().invoke(app, [
            "--device", "cuda", "-q", "train", "--data-dir", str(data_dir), "--out",
            str(tmp_path / name), "--no-test", "--json", "--set", "model.hidden=32", "--set",
            "model.layers=1", "--set", "model.heads=2", "--set", "model.dropout=0", "--set",
            "train.epochs=3", "--set", "train.batch_size=8", *sets])
        assert result.exit_code == 0, result.stderr
        runs[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    for e, g in zip(runs["eager"], runs["graph"], strict=True):  # bf16: close, not equal
        assert g["loss"] == pytest.approx(e["loss"], rel=0.05)
