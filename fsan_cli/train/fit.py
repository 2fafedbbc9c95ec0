"""Training in this process, alone or as one rank of torchrun: the locked run folder, SIGTERM
ended like Ctrl-C, and what an interrupted run kept said with the command that continues it."""

from __future__ import annotations

import math
import signal
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from fsan_cli.core.errors import Interrupted
from fsan_cli.core.output import log, warn
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
        if dist.main and not resume and "train" in store.splits and (coarse := too_coarse(store)):
            warn(coarse)
        t0 = time.perf_counter()
        try:
            with _sigterm_as_interrupt():
                summary = loop.train(cfg, store, folder.work, device, resume=resume, compile=compile,
                                         dist=dist, promote=folder.promote if folder.replacing else None)
        except loop.TrainingInterrupted as exc:
            raise interrupted(exc, out if folder.work != out else None, again) from None
        finally:
            distributed.shutdown()
    if not dist.main:
        return None
    log(f"Trained in {time.perf_counter() - t0:.0f} s; best epoch {summary['best_epoch']} "
        f"{chosen_by(store)}; run folder {out}")
    return {**summary, "device": device}


TOO_COARSE = 0.25  # warn where this share of the annotated moments is shorter than one clip
MOST_CLIPS = 256  # more clips than this are not suggested: 33,000 segments a video already


def too_coarse(store: Store) -> str | None:
    """A warning where the videos are so long for N_v clips that many annotated moments (any
    split with times) are shorter than one clip of their video: every video, however long, is
    read as N_v clips, and a moment shorter than a clip cannot be told from its neighbours.
    None where too few are (or the data has no times)."""
    clips = store.clips
    ratio = sorted(q.duration / (e - s) for split in store.splits.values() for q in split
                   for s, e in q.times[:1] if e > s and q.duration > 0)
    if not ratio:
        return None
    short = sum(r > clips for r in ratio) / len(ratio)
    if short < TOO_COARSE:
        return None
    need = ratio[int(0.75 * (len(ratio) - 1))]  # clips for three moments in four to span one
    durations = sorted(q.duration for split in store.splits.values() for q in split)
    clip_s = durations[len(durations) // 2] / clips
    more = 16 * math.ceil(need / 16)
    return (f"{100 * short:.0f}% of the annotated moments (all splits) are shorter than one clip of their video: "
            f"each video is read as {clips} clips (median {clip_s:.1f} s a clip), and a moment shorter than a clip "
            f"cannot be told from its neighbours, so the model cannot learn to place it. Cut the videos into "
            f"parts of a few minutes (fsan ground and evaluate read longer videos in windows)"
            + (f", or prepare the data with more clips (fsan prepare --clips {more})" if more <= MOST_CLIPS else ""))


def chosen_by(store: Store) -> str:
    """What chose the best epoch, as the loop did (train/loop.py end_epoch)."""
    val = store.splits.get("val") or []
    if any(q.times for q in val):
        return "on val (mIoU of the annotated val queries)"
    if len({q.video for q in val}) >= 2:
        return ("by val matching (a sentence's own video scored above other val videos; "
                "the data has no times, so no grounding metric chose it)")
    return "as the last (the data has no val split to choose by)"


def scoring_interrupted(out: Path) -> Interrupted:
    """Ctrl-C while a finished run was being scored on test: the run is whole."""
    return Interrupted(f"interrupted while scoring the test split; the run in {out} is complete. "
                       f"Score it with: fsan evaluate --checkpoint {out / 'best.pt'}")


def interrupted(exc: loop.TrainingInterrupted, old_run: Path | None = None, again: str | None = None) -> Interrupted:
    """What an interrupted training kept and how to go on: `old_run`, the run that --overwrite
    would have replaced; `again`, how the command continues when run again (--seeds)."""
    if again is not None:
        kept = "nothing of it was kept" if exc.saved_step is None else f"its last checkpoint (step {exc.saved_step}) is intact"
        return Interrupted(f"interrupted in {exc.out_dir} at step {exc.step}; {kept}. {again}")
    if exc.saved_step is None and old_run is not None:
        return Interrupted(f"interrupted before the new run's first checkpoint; the run in {old_run} "
                           "is as it was. Run the command again.")
    if exc.saved_step is None:
        return Interrupted("interrupted before the first checkpoint, so nothing was kept. Run the command again.")
    return Interrupted(f"interrupted at step {exc.step}; the last checkpoint, {exc.out_dir / 'last.pt'} "
                       f"(step {exc.saved_step}), is intact. Continue with: fsan train --resume {exc.out_dir}")


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
