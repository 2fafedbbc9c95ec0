"""DistributedDataParallel on CPU: `torchrun --nproc_per_node=2 -m fsan_cli train` (gloo)
follows the loss trajectory of one process with the same global batch.

Tolerance: per-epoch losses within 0.01 absolute (measured: 1e-5 after epoch 1, 3e-3 after
epoch 2). They are not equal because L^t (eq. 6) divides by the number of usable negatives on
each rank's shard rather than in the global batch (L^i and L^o are exact means of the
global batch); the small difference compounds over the steps.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fsan_cli.data.synthetic import ensure_synthetic
from fsan_cli.train.distributed import Dist

ROOT = Path(__file__).resolve().parents[1]
SETS = ["model.hidden=16", "model.layers=1", "model.heads=2", "model.align_dim=8",
        "model.dropout=0.0", "train.epochs=2", "train.batch_size=16"]
LOSSES = ("loss", "loss_matching", "loss_inner", "loss_outer")


def test_shards_are_disjoint_and_weighted_by_size():
    idx, neg = torch.arange(10, 20), torch.arange(10)
    parts = [Dist(rank, 3).shard(idx, neg) for rank in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), idx)
    assert torch.equal(torch.cat([p[1] for p in parts]), neg)
    assert sum(p[2] for p in parts) == pytest.approx(1.0)
    # a last batch smaller than the world: the spare rank takes part with weight 0
    spare = Dist(2, 3).shard(idx[:2], neg[:2])
    assert spare[2] == 0.0 and spare[0].numel() == 1
    with pytest.raises(Exception, match="smaller than the 3 processes"):
        Dist(0, 3).check_batch(2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=180)


def losses(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in LOSSES} for r in rows]


def test_two_processes_follow_one_process(tmp_path):
    ensure_synthetic(tmp_path, sizes={"train": 30, "val": 8, "test": 8})
    train = ["-m", "fsan_cli", "--device", "cpu", "train", "--data-dir", str(tmp_path), "--no-test",
             "--json", *[f"--set={s}" for s in SETS]]
    ddp = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master_port={free_port()}", *train, "--out", str(tmp_path / "ddp")], tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = run([sys.executable, *train, "--out", str(tmp_path / "one")], tmp_path)
    assert one.returncode == 0, one.stderr
    # each rank's share of 8 in pieces of 3, 3 and 2; gradients all-reduced on the last piece
    pieces = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                  f"--master_port={free_port()}", *train, "--micro-batch", "3",
                  "--out", str(tmp_path / "pieces")], tmp_path)
    assert pieces.returncode == 0, pieces.stderr[-3000:]
    b = losses(tmp_path / "one")
    for run_dir in ("ddp", "pieces"):
        a = losses(tmp_path / run_dir)
        assert len(a) == len(b) == 2
        for x, y in zip(a, b, strict=True):
            for key in LOSSES:
                assert x[key] == pytest.approx(y[key], abs=1e-2), (run_dir, key, a, b)
        assert a[0]["loss"] == pytest.approx(b[0]["loss"], abs=1e-3)
    # only rank 0 writes files and prints: one JSON summary, one Device line
    assert len(ddp.stdout.strip().splitlines()) == 1 and json.loads(ddp.stdout)["steps"] == 14
    assert ddp.stderr.count("Device: cpu") == 1
    names = sorted(p.name for p in (tmp_path / "ddp").iterdir())
    assert names == ["best.pt", "config.toml", "last.pt", "metrics.jsonl", "run.json"]


def test_two_process_resume_equals_uninterrupted(tmp_path):
    """A DDP run stopped mid-epoch and resumed from last.pt ends with the weights and metrics of
    the same run uninterrupted, bit for bit: each rank's dropout stream is saved and restored."""
    import torch

    ensure_synthetic(tmp_path, sizes={"train": 30, "val": 8, "test": 8})
    sets = [s for s in SETS if s != "model.dropout=0.0"] + ["model.dropout=0.1", "train.checkpoint_every=3"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    data = ["--data-dir", str(tmp_path)]
    train = ["train", *data, "--no-test", *[f"--set={s}" for s in sets]]
    ref = run([*torchrun, f"--master_port={free_port()}", "-m", "fsan_cli", "--device", "cpu", *train,
               "--out", str(tmp_path / "ref")], tmp_path)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "stopped"
    stopped = run([*torchrun, f"--master_port={free_port()}", str(ROOT / "tests" / "ddp_stop.py"), "4",
                   "--device", "cpu", *train, "--out", str(out)], tmp_path)
    assert stopped.returncode != 0
    assert "interrupted at step 4; the last checkpoint" in stopped.stderr and "(step 3)" in stopped.stderr
    resumed = run([*torchrun, f"--master_port={free_port()}", "-m", "fsan_cli", "--device", "cpu", "train",
                   *data, "--no-test", "--resume", str(out)], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("last.pt", "best.pt"):
        a = torch.load(tmp_path / "ref" / name, weights_only=False)["state_dict"]
        b = torch.load(out / name, weights_only=False)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    strip = [{k: v for k, v in json.loads(line).items() if k != "samples_per_s"}
             for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    again = [{k: v for k, v in json.loads(line).items() if k != "samples_per_s"}
             for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert strip == again and len(strip) == 2
