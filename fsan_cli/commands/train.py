"""`fsan train`: train FSAN, select on val, then score the best checkpoint on test."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from fsan_cli.errors import FsanError, handle_errors
from fsan_cli.options import ConfigOpt, DataDirOpt, DatasetOpt, JsonOpt, SetOpt


@handle_errors
def train(
    dataset: DatasetOpt = "synthetic",
    data_dir: DataDirOpt = Path("data"),
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Run folder (default runs/<dataset>-<time>)."),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Shortcut for --set train.epochs=N.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Shortcut for --set train.batch_size=N.")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run folder.")] = False,
    no_test: Annotated[bool, typer.Option("--no-test", help="Skip scoring on the test split.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Train FSAN on a prepared dataset (default: the embedded synthetic benchmark).

    Selects the best epoch on the val split, then prints the test table: the model, a seeded
    random baseline and the best fixed-segment prior.
    """
    from fsan_cli.config import load_config
    from fsan_cli.device import resolve_device
    from fsan_cli.commands.evaluate import run_evaluation
    from fsan_cli.output import log, print_json
    from fsan_cli.state import STATE

    overrides = list(set_ or [])
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    if batch_size is not None:
        overrides.append(f"train.batch_size={batch_size}")
    cfg = load_config(dataset, config, overrides)
    for key in ("epochs", "batch_size"):
        if cfg["train"][key] < 1:
            raise FsanError(f"train.{key} must be at least 1, got {cfg['train'][key]}", "Pass a positive number")
    out = out or Path("runs") / f"{dataset}-{datetime.now():%Y%m%d-%H%M%S}"
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FsanError(f"run folder {out} already exists", "Pass --overwrite to replace it, or choose another --out")
    device = resolve_device(STATE.device)
    store = open_store(dataset, data_dir, cfg["data"]["clips"])
    from fsan_cli import engine

    t0 = time.perf_counter()
    summary = engine.train(cfg, store, out, device)
    log(f"Trained in {time.perf_counter() - t0:.0f} s; best epoch {summary['best_epoch']} on val; run folder {out}")
    if no_test:
        if json_:
            print_json(summary)
        return
    run_evaluation(dataset, store, "test", checkpoint=out / "best.pt", as_json=json_,
                   top_k=cfg["eval"]["top_k"], seed=cfg["train"]["seed"],
                   extra_json={"run": str(out), "best_epoch": summary["best_epoch"]})
    log(f"Total wall time {time.perf_counter() - t0:.0f} s")


def open_store(dataset: str, data_dir: Path, clips: int):
    from fsan_cli.data.store import load_store

    if dataset == "synthetic":
        from fsan_cli.data.synthetic import ensure_synthetic

        return load_store(ensure_synthetic(data_dir, clips=clips))
    return load_store(data_dir / dataset)
