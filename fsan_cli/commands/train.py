"""`fsan train`: train FSAN, select on val, then score the best checkpoint on test."""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import contextmanager, suppress
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
        int | None, typer.Option("--batch-size", help="Shortcut for --set train.batch_size=N (the global batch).")
    ] = None,
    micro_batch: Annotated[
        int | None,
        typer.Option("--micro-batch", help="Shortcut for --set train.micro_batch=N: at most N samples per "
                     "forward/backward on each process (less memory, the same gradient)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run folder.")] = False,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", metavar="RUN_DIR",
                     help="Continue an interrupted run from RUN_DIR/last.pt with its config.toml."),
    ] = None,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the training step (compiling takes minutes; on one GPU it replaces the CUDA graph that train.cuda_graph captures).")] = False,
    no_test: Annotated[bool, typer.Option("--no-test", help="Skip scoring on the test split.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Train FSAN on a prepared dataset (default: the embedded synthetic benchmark).

    Selects the best epoch on the val split, then prints the test table: the model, a seeded
    random baseline and the best fixed-segment prior. The run folder holds config.toml,
    metrics.jsonl, best.pt and last.pt (saved each epoch and every train.checkpoint_every
    steps). After Ctrl-C or a crash, `fsan train --resume RUN_DIR` continues to the same
    result; it takes the settings from the run folder, so it refuses --set, --config,
    --epochs and --batch-size (--micro-batch may change). Memory: --micro-batch N sends each
    batch through in pieces of N samples with the same gradient; on a CPU, batches that would
    not fit the free RAM are split so by themselves. Several GPUs: torchrun --nproc_per_node=N -m fsan_cli train ...
    """
    from fsan_cli import distributed, training
    from fsan_cli.data.store import open_store
    from fsan_cli.device import resolve_device
    from fsan_cli.evaluation import evaluate_split, show
    from fsan_cli.output import log, print_json
    from fsan_cli.state import STATE

    if int(os.environ.get("RANK", "0")) > 0:
        STATE.quiet = True  # under torchrun only rank 0 speaks
    # options and settings first, then the device, then the data (which may be generated)
    if resume is not None:
        _check_resume_options(resume, out, config, set_, epochs, batch_size, overwrite)
        device = resolve_device(STATE.device)
        cfg, store, dataset = _resumed(resume, data_dir)
        if micro_batch is not None:  # how a batch is split, not what is learnt: may change
            before = cfg.train.micro_batch
            cfg = cfg.replace("train.micro_batch", micro_batch)
            if micro_batch != before:
                log(f"--micro-batch {micro_batch} (the run had {before or 'whole batches'}): "
                    "the same gradients up to rounding, not bit for bit")
        out = resume
    else:
        cfg = _settings(dataset, config, set_, epochs, batch_size, micro_batch)
        out = out or Path("runs") / f"{dataset}-{datetime.now():%Y%m%d-%H%M%S}"
        _check_out(out, overwrite)
        device = resolve_device(STATE.device)
        store = open_store(dataset, data_dir, cfg.data.clips)
    dist, device = distributed.init(device)
    t0 = time.perf_counter()
    try:
        with _sigterm_as_interrupt():
            summary = training.train(cfg, store, out, device, resume=resume is not None,
                                     compile=compile_, dist=dist)
    except training.TrainingInterrupted as exc:
        _interrupted(exc)
    finally:
        distributed.shutdown()
    if not dist.main:
        return
    chosen = "on val" if store.splits.get("val") else "as the last (the data has no val split)"
    log(f"Trained in {time.perf_counter() - t0:.0f} s; best epoch {summary['best_epoch']} {chosen}; run folder {out}")
    if no_test:
        if json_:
            print_json(summary)
        return
    result = evaluate_split(dataset, store, "test", checkpoint=out / "best.pt", top_k=cfg.eval.top_k,
                            seed=cfg.train.seed, device=device, with_baselines=not json_)
    show(result, json_, extra_json={"run": str(out), "best_epoch": summary["best_epoch"]})
    log(f"Total wall time {time.perf_counter() - t0:.0f} s")


def _settings(dataset, config, set_, epochs, batch_size, micro_batch=None):
    from fsan_cli.settings import load_settings

    overrides = list(set_ or [])
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    if batch_size is not None:
        overrides.append(f"train.batch_size={batch_size}")
    if micro_batch is not None:
        overrides.append(f"train.micro_batch={micro_batch}")
    return load_settings(dataset, config, overrides)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FsanError(f"--out {out} is a file, not a folder", "Choose another --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FsanError(f"run folder {out} already exists",
                        "Pass --overwrite to replace it, --resume to continue it, or choose another --out")


def _check_resume_options(resume, out, config, set_, epochs, batch_size, overwrite) -> None:
    given = [name for name, value in (("--config", config), ("--set", set_), ("--epochs", epochs),
                                      ("--batch-size", batch_size)) if value]
    if overwrite:
        given.append("--overwrite")
    if out is not None and Path(out).resolve() != Path(resume).resolve():
        given.append("--out")
    if given:
        raise FsanError(
            f"--resume continues a run with its own settings, so {' and '.join(given)} cannot go with it",
            f"Drop {' and '.join(given)}, or start a new run without --resume",
        )


def _resumed(run_dir: Path, data_dir: Path):
    """(settings, store, dataset) of the run in `run_dir`."""
    from fsan_cli.data.store import load_store, open_store, store_exists
    from fsan_cli.output import log
    from fsan_cli.resume import read_run
    from fsan_cli.settings import load_settings

    info, cfg_path = read_run(run_dir)
    dataset = info["dataset"]
    cfg = load_settings(dataset, cfg_path)
    recorded = Path(info.get("store", ""))
    if store_exists(recorded):
        store = load_store(recorded)
    else:
        store = open_store(dataset, data_dir, cfg.data.clips)
    log(f"Resuming {run_dir} ({dataset}, data at {store.path})")
    return cfg, store, dataset


def _interrupted(exc) -> None:
    if exc.saved_step is None:
        print("Error: interrupted before the first checkpoint, so nothing was kept. "
              "Run the command again.", file=sys.stderr)
    else:
        print(f"Error: interrupted at step {exc.step}; the last checkpoint, {exc.out_dir / 'last.pt'} "
              f"(step {exc.saved_step}), is intact. Continue with: fsan train --resume {exc.out_dir}",
              file=sys.stderr)
    raise typer.Exit(130)


@contextmanager
def _sigterm_as_interrupt():
    """A plain `kill` ends training like Ctrl-C: the last checkpoint kept, the resume line printed."""

    def _raise(signum, frame):
        raise KeyboardInterrupt

    old = None
    with suppress(ValueError):  # signals can only be set from the main thread
        old = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)

