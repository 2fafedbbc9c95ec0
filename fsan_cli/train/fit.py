"""Training in this process, alone or as one rank of torchrun: the locked run folder, SIGTERM
ended like Ctrl-C, and what an interrupted run kept said with the command that continues it."""

from __future__ import annotations

import signal
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import typer

from fsan_cli.core.output import log
from fsan_cli.core.settings import Settings
from fsan_cli.data.store import Store
from fsan_cli.train import distributed, loop
from fsan_cli.train.runs import run_folder


def fit(cfg: Settings, store: Store, out: Path, device: Any, resume: bool, compile: bool,
        overwrite: bool = False, again: str | None = None) -> dict | None:
    """Train in this process (one rank of torchrun, or alone) in the locked run folder `out`
    (run_folder); rank 0 gets the summary, the others None. SIGTERM ends training like Ctrl-C:
    the last checkpoint kept, exit code 130 and the command that resumes printed."""

    with run_folder(out, resume, overwrite) as folder:
        dist, device = distributed.init(device)
        t0 = time.perf_counter()
        try:
            with _sigterm_as_interrupt():
                summary = loop.train(cfg, store, folder.work, device, resume=resume, compile=compile,
                                         dist=dist, promote=folder.promote if folder.replacing else None)
        except loop.TrainingInterrupted as exc:
            _interrupted(exc, out if folder.work != out else None, again)
        finally:
            distributed.shutdown()
    if not dist.main:
        return None
    chosen = "on val" if store.splits.get("val") else "as the last (the data has no val split)"
    log(f"Trained in {time.perf_counter() - t0:.0f} s; best epoch {summary['best_epoch']} {chosen}; "
        f"run folder {out}")
    return {**summary, "device": device}


class ScoringInterrupted(KeyboardInterrupt):
    """Ctrl-C while a finished run was being scored on test: the run is whole."""

    def __init__(self, out: Path) -> None:
        super().__init__(str(out))
        self.out = out

    def report(self) -> None:
        print(f"Error: interrupted while scoring the test split; the run in {self.out} is complete. "
              f"Score it with: fsan evaluate --checkpoint {self.out / 'best.pt'}", file=sys.stderr)
        raise typer.Exit(130)


def _interrupted(exc, old_run: Path | None = None, again: str | None = None) -> None:
    if again is not None:  # a command that continues where it stopped when run again (--seeds)
        kept = "nothing of it was kept" if exc.saved_step is None else f"its last checkpoint (step {exc.saved_step}) is intact"
        print(f"Error: interrupted in {exc.out_dir} at step {exc.step}; {kept}. {again}", file=sys.stderr)
        raise typer.Exit(130)
    if exc.saved_step is None and old_run is not None:
        print(f"Error: interrupted before the new run's first checkpoint; the run in {old_run} "
              "is as it was. Run the command again.", file=sys.stderr)
    elif exc.saved_step is None:
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
