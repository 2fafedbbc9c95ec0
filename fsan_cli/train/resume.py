"""`fsan train --resume`: last.pt holds the loop's state, the optimizer's and every RNG's, so an
interrupted run continues bit for bit (on a CPU; per rank under DDP)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsan_cli.core import checkpoint
from fsan_cli.core.errors import FsanError
from fsan_cli.core.settings import Settings


@dataclass
class LoopState:
    """Where training stands; saved in last.pt so `--resume` continues bit for bit."""

    epoch: int = 1  # the epoch in progress, 1-based
    pos: int = 0  # where in this epoch's permutation the next batch starts
    step: int = 0  # optimizer steps taken
    perm: torch.Tensor | None = None  # this epoch's order of the train queries
    sums: torch.Tensor | None = None  # (4,) summed losses of this epoch: total, L^t, L^i, L^o
    seen: int = 0  # samples of this epoch so far
    elapsed: float = 0.0  # seconds of this epoch spent before a resume
    best: dict[str, Any] = field(default_factory=lambda: {"score": -math.inf, "epoch": 0})
    log: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl records
    saved_step: int | None = None  # step of the newest last.pt, None before the first


def save_last(run: Any, state: LoopState) -> None:
    """last.pt: a full checkpoint plus everything `--resume` needs to continue bit for bit."""
    step = state.step
    cuda = run.device.type == "cuda"
    # each rank's own dropout stream and share of the epoch's loss sums, so that a resumed DDP
    # run continues bit for bit
    ranks = run.dist.gather({
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(run.device) if cuda else None,
        "sums": None if state.sums is None else state.sums.cpu(),
    })
    if run.dist.main:
        resume = {
            "step": step, "epoch": state.epoch, "pos": state.pos, "seen": state.seen,
            "elapsed": state.elapsed, "best": state.best, "log": state.log,
            "perm": None if state.perm is None else state.perm.cpu(),
            "sums": None if state.sums is None else sum(r["sums"] for r in ranks),  # all ranks'
            "optimizer": run.opt.state_dict(),
            "generator": run.gen.get_state(),
            "torch_rng": ranks[0]["torch"],
            "cuda_rng": ranks[0]["cuda"],
            "numpy_rng": numpy_rng_state(),
            "world": run.dist.world,
            "ranks": ranks,
        }
        extra = {"epoch": state.epoch - 1, "step": step, "resume": resume}
        checkpoint.save(checkpoint.payload(run.model, run.cfg, run.store, extra), run.out_dir / "last.pt")
    run.dist.barrier()
    state.saved_step = step


def restore_run(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                gen: torch.Generator, cfg: Settings, store: Any, device: torch.device,
                dist: Any) -> LoopState:
    """Load last.pt into the model, optimizer and RNGs; the loop state to continue from."""
    ckpt = checkpoint.load(path)
    r = ckpt.get("resume")
    if r is None:
        raise FsanError(f"{path} holds no training state", "Train again with --overwrite")
    checkpoint.check_compatible(ckpt, store)
    if ckpt["vocab"] != store.vocab:
        raise FsanError(
            f"the vocabulary of {path} differs from the data at {store.path}",
            "Resume with the data the run was trained on, or train again",
        )
    saved, now = checkpoint.settings_of(ckpt).learning(), cfg.learning()
    changed = [k for k, v in saved.items() if now[k] != v]
    if changed:
        raise FsanError(
            f"the run's config.toml differs from {path} in {', '.join(changed[:5])}",
            "Undo the edit, or train a new run with those settings",
        )
    model.load_state_dict(ckpt["state_dict"])
    opt.load_state_dict(r["optimizer"])
    gen.set_state(r["generator"])
    set_numpy_rng_state(r["numpy_rng"])
    ranks = r.get("ranks") or []
    same_world = len(ranks) == dist.world
    # this rank's own dropout stream and share of the epoch's sums; rank 0's for a file that
    # holds none per rank
    mine = ranks[dist.rank] if same_world else {"torch": r["torch_rng"], "cuda": r["cuda_rng"], "sums": r["sums"]}
    torch.set_rng_state(mine["torch"])
    if mine["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], device)
    sums = mine["sums"]
    if not same_world and dist.world > 1:  # another number of processes: fresh streams per rank,
        torch.manual_seed(cfg.train.seed + dist.rank + r["step"])
        if sums is not None and not dist.main:  # and rank 0 carries the epoch's sums so far
            sums = torch.zeros_like(sums)
    to = partial(torch.Tensor.to, device=device)
    return LoopState(
        epoch=r["epoch"], pos=r["pos"], step=r["step"], seen=r["seen"], elapsed=r["elapsed"],
        perm=None if r["perm"] is None else to(r["perm"]),
        sums=None if sums is None else to(sums),
        best=r["best"], log=r["log"], saved_step=r["step"],
    )


def numpy_rng_state() -> dict[str, Any]:
    """numpy's global RNG state as a tensor and plain values (a checkpoint holds no arrays)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def set_numpy_rng_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]))
