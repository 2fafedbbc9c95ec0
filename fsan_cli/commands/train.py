"""`fsan train`: train FSAN, select on val, then score the best checkpoint on test."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from fsan_cli.commands.options import ConfigOpt, DataDirOpt, DatasetOpt, JsonOpt, SetOpt, SizeOpt
from fsan_cli.core.errors import UsageError, handle_errors


@handle_errors
def train(
    dataset: DatasetOpt = "synthetic",
    data_dir: DataDirOpt = Path("data"),
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Run folder (default runs/<dataset>-<time>)."),
    ] = None,
    size: SizeOpt = None,
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
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace the run in --out (a folder with run.json or config.toml) once the "
        "new run has its first checkpoint.")] = False,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", metavar="RUN_DIR",
                     help="Continue an interrupted run from RUN_DIR/last.pt with its config.toml."),
    ] = None,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the training step (compiling takes minutes; on one GPU it replaces the CUDA graph that train.cuda_graph captures).")] = False,
    no_test: Annotated[bool, typer.Option("--no-test", help="Skip scoring on the test split.")] = False,
    seeds: Annotated[
        str | None,
        typer.Option("--seeds", metavar="LIST", help="Train once per seed of the list (e.g. 0,1,2) into "
                     "OUT/seed<N>; the test table shows each seed, their mean and standard deviation. Run again, "
                     "it continues: seed folders holding a run of the same settings are resumed."),
    ] = None,
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
    A run folder is locked while a run trains in it (RUN_DIR/.lock holds its PID), so a second
    `fsan train` into it stops with that PID.
    """
    from fsan_cli.core.output import log, print_json
    from fsan_cli.core.state import STATE
    from fsan_cli.evaluate.evaluation import show
    from fsan_cli.train import runs
    from fsan_cli.train.once import train_once

    STATE.quiet = STATE.quiet or runs.quiet_ranks()
    # options and settings first, then the device, then the data (which may be generated)
    if seeds is not None:
        return _train_seeds(dataset, data_dir, out, config, set_, epochs, batch_size, micro_batch, size,
                            overwrite, resume, compile_, no_test, seeds, json_)
    cfg = None  # a resumed run's own
    if resume is not None:
        runs.check_resume_options(resume, out, config, set_, epochs, batch_size, overwrite, size)
    else:
        cfg = _settings(dataset, config, set_, epochs, batch_size, micro_batch, size)
        out = out or runs.default_out(dataset)
        runs.check_out(out, overwrite)
    run = train_once(dataset, data_dir, out, cfg, resume, micro_batch, STATE.device, compile_, overwrite,
                     test=not no_test, with_baselines=not json_)
    if run.result is None:  # another rank's process, or no test wanted
        if run.summary is not None and json_:
            print_json({k: v for k, v in run.summary.items() if k != "device"})
        return
    show(run.result, json_, extra_json={"run": str(run.out), "best_epoch": run.summary["best_epoch"]})
    log(f"Total wall time {time.perf_counter() - run.started:.0f} s")


def _train_seeds(dataset, data_dir, out, config, set_, epochs, batch_size, micro_batch, size, overwrite,
                 resume, compile_, no_test, seeds, json_) -> None:
    from fsan_cli.core.device import resolve_device
    from fsan_cli.core.state import STATE
    from fsan_cli.data.datasets import open_store
    from fsan_cli.train import runs
    from fsan_cli.train.seeds import parse_seeds, plan_folders, show_seeds, train_seeds

    chosen = parse_seeds(seeds)
    for name, value in (("--resume", resume), ("--no-test", no_test)):
        if value:
            raise UsageError(f"--seeds trains and tests new runs, so {name} cannot go with it",
                            f"Drop {name}, or train one seed at a time")
    cfg = _settings(dataset, config, set_, epochs, batch_size, micro_batch, size)
    out = out or runs.default_out(dataset)
    kept = plan_folders(out, chosen, cfg, overwrite)  # before the device and the data
    device = resolve_device(STATE.device)
    store = open_store(dataset, data_dir, cfg.data.clips)
    result = train_seeds(dataset, cfg, store, out, chosen, kept, device, compile_, overwrite, json_)
    if result is not None:
        show_seeds(dataset, result, json_)


def _settings(dataset, config, set_, epochs, batch_size, micro_batch=None, size=None):
    from fsan_cli.core.settings import load_settings
    from fsan_cli.core.state import STATE

    overrides = list(set_ or [])
    if epochs is not None and epochs < 1:
        from fsan_cli.core.errors import FsanError

        raise FsanError(f"--epochs must be at least 1, got {epochs}",
                        "Pass a value at least 1 (train.epochs=0 trains for train.steps steps)")
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    if batch_size is not None:
        overrides.append(f"train.batch_size={batch_size}")
    if micro_batch is not None:
        overrides.append(f"train.micro_batch={micro_batch}")
    return load_settings(dataset, config, overrides, size, STATE.device)


