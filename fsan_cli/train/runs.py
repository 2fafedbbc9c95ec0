"""Run folders and the process around a training run: a new run's folder (refused if it exists
without --overwrite), a run found again for --resume or by `fsan ground` (the newest best.pt),
and training under torchrun ranks, SIGTERM and Ctrl-C.

A run folder holds config.toml (the resolved settings), run.json (the dataset and store it
trained on), metrics.jsonl (one line per epoch), best.pt and last.pt (fsan_cli/core/checkpoint.py).
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import signal
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

from fsan_cli.core import checkpoint
from fsan_cli.core.atomic import atomic_write_text, temp_files
from fsan_cli.core.errors import FsanError, UsageError, write_problem
from fsan_cli.core.output import log
from fsan_cli.core.settings import Settings, load_settings
from fsan_cli.data.datasets import open_store
from fsan_cli.data.store import Store, load_store, store_exists
from fsan_cli.train.lock import LOCK_NAME, holder, in_use, lock_folder

RUN_INFO = "run.json"  # which store a run trained on, so `--resume` finds it again


def read_run(out_dir: Path) -> tuple[dict[str, Any], Path]:
    """(run.json, config.toml path) of a run folder to resume; errors name what is missing."""
    out_dir = Path(out_dir)
    info_path, cfg_path = out_dir / RUN_INFO, out_dir / "config.toml"
    if not out_dir.is_dir():
        raise FsanError(f"run folder {out_dir} does not exist", "Pass --resume with a folder `fsan train` wrote")
    if not info_path.is_file() or not cfg_path.is_file():
        raise FsanError(
            f"{out_dir} is not a resumable run folder (no {RUN_INFO} or config.toml)",
            "Pass --resume with a folder `fsan train` wrote",
        )
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if not isinstance(info, dict) or "dataset" not in info:
            raise ValueError("no dataset")
    except (ValueError, OSError):
        raise FsanError(f"{info_path} is damaged", "Train again with --overwrite") from None
    return info, cfg_path
RUN_FILES = ("config.toml", "metrics.jsonl", "best.pt", "last.pt", RUN_INFO)


def start_run_folder(out_dir: Path, cfg: Settings, store: Store) -> None:
    """Create the run folder (clearing a previous run's files) with config.toml and run.json."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_run_files(out_dir, keep_folder=True)
        atomic_write_text(out_dir / "config.toml", cfg.to_toml())
        info = {"dataset": store.manifest.get("dataset"), "store": str(Path(store.path).resolve())}
        atomic_write_text(out_dir / RUN_INFO, json.dumps(info, indent=2) + "\n")
        atomic_write_text(out_dir / "metrics.jsonl", "")
    except OSError as exc:
        remove_run_files(out_dir)
        raise FsanError(
            f"cannot write the run folder {out_dir} ({exc.strerror or exc})",
            "Choose another --out, or fix its permissions",
        ) from None


def remove_run_files(out_dir: Path, keep_folder: bool = False) -> None:
    if not out_dir.is_dir():
        return
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)
        for tmp in temp_files(out_dir / name):
            tmp.unlink(missing_ok=True)
    if not keep_folder and not any(out_dir.iterdir()):
        out_dir.rmdir()


RUNS = Path("runs")


def find_checkpoint(runs: Path = RUNS, dataset: str | None = None) -> Path:
    """The newest best.pt under `runs` (by modification time); of a run of `dataset` when given
    (its run.json says which)."""
    found = sorted(Path(runs).glob("**/best.pt"), key=lambda p: p.stat().st_mtime) if Path(runs).is_dir() else []
    if dataset is not None:
        found = [p for p in found if _run_dataset(p.parent) == dataset]
    if not found:
        what = f"of {dataset} " if dataset is not None else ""
        train = "fsan train" + (f" --dataset {dataset}" if dataset not in (None, "synthetic") else "")
        raise FsanError(f"no checkpoint {what}found under {runs}/",
                        f"Train one with `{train}`, or pass --checkpoint PATH")
    return found[-1]


def _run_dataset(folder: Path) -> str | None:
    try:
        info = json.loads((folder / RUN_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info.get("dataset") if isinstance(info, dict) else None


def check_out(out: Path, overwrite: bool) -> None:
    """A new run may go into `out`: absent or empty, or a run folder to replace with --overwrite
    (never another kind of folder), and no other training in it. Under torchrun rank 0 alone
    checks: the others would find the folder it has just locked and started."""
    if quiet_ranks():
        return
    if out.exists() and not out.is_dir():
        raise FsanError(f"--out {out} is a file, not a folder", "Choose another --out")
    if not out.is_dir():
        return
    pid = holder(out)
    if pid is not None:
        raise in_use(out, pid)
    if not any(p.name != LOCK_NAME for p in out.iterdir()):
        return
    if not overwrite:
        raise FsanError(f"run folder {out} already exists",
                        "Pass --overwrite to replace it, --resume to continue it, or choose another --out")
    if not is_run_folder(out):
        raise FsanError(f"{out} is not a run folder (it has no {RUN_INFO} or config.toml), so "
                        "--overwrite does not replace it", "Choose another --out")


def is_run_folder(folder: Path) -> bool:
    return (folder / RUN_INFO).is_file() or (folder / "config.toml").is_file()


class RunFolder:
    """Where training writes (`work`) and where the run ends up (`out`): the same folder, or,
    when --overwrite replaces a run, a sibling `.NAME.new-PID` until the new run's first
    checkpoint; then `promote` moves its files over the old run's, and an interrupt before
    that leaves the old run as it was."""

    def __init__(self, out: Path, work: Path) -> None:
        self.out, self.work = out, work
        self.replacing = work != out

    def promote(self) -> Path:
        """Move the new run's files over the old run's (other files stay); returns `out`."""
        if self.work != self.out:
            with _deferred_interrupts():
                for name in RUN_FILES:
                    if (self.work / name).exists():
                        os.replace(self.work / name, self.out / name)
                    else:
                        (self.out / name).unlink(missing_ok=True)
                shutil.rmtree(self.work, ignore_errors=True)
            self.work = self.out
        return self.out


@contextmanager
def run_folder(out: Path, resume: bool, overwrite: bool) -> Iterator[RunFolder]:
    """The run folder of `fsan train`, locked for this run (fsan_cli/train/lock.py): the temporary
    files and sibling folders of killed runs cleared, checked again now that it is ours.
    Under torchrun only rank 0 writes, so only it locks."""
    if quiet_ranks():
        yield RunFolder(out, out)
        return
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FsanError(f"cannot write the run folder {out} ({exc.strerror or exc})",
                        "Choose another --out, or fix its permissions") from None
    lock = lock_folder(out, None if resume else "--out")
    try:
        clear_leftovers(out)
        if not resume:
            check_out(out, overwrite)
        replace = not resume and is_run_folder(out)
        yield RunFolder(out, out.with_name(f".{out.name}.new-{os.getpid()}") if replace else out)
    finally:
        lock.release()
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def clear_leftovers(out: Path) -> None:
    """What killed runs left in and beside a folder this process has locked: temporary files of
    unfinished writes, and the folder of a replacing run that never had a checkpoint."""
    stale = [t for name in RUN_FILES for t in temp_files(out / name)]
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    folders = sorted(out.parent.glob(f".{glob.escape(out.name)}.new-*"))
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    if stale or folders:
        log(f"Removed what an interrupted run left in {out}: {len(stale)} temporary files, "
            f"{len(folders)} unfinished folders beside it")


@contextmanager
def _deferred_interrupts() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done (a few renames), then interrupt."""
    caught: list[int] = []
    old = {}
    with suppress(ValueError):  # signals can only be set from the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt


def check_resume_options(resume, out, config, set_, epochs, batch_size, overwrite, size=None) -> None:
    given = [name for name, value in (("--size", size), ("--config", config), ("--set", set_),
                                      ("--epochs", epochs), ("--batch-size", batch_size)) if value]
    if overwrite:
        given.append("--overwrite")
    if out is not None and Path(out).resolve() != Path(resume).resolve():
        given.append("--out")
    if given:
        raise UsageError(
            f"--resume continues a run with its own settings, so {' and '.join(given)} cannot go with it",
            f"Drop {' and '.join(given)}, or start a new run without --resume",
        )


def check_last(run_dir: Path) -> None:
    """`--resume` continues from RUN/last.pt: it must be a regular file that core/checkpoint.py
    loads and that holds the loop's state, else an Error that says what is wrong with it, before
    anything of the run is read further, deleted or replaced."""
    path = Path(run_dir) / "last.pt"
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            problem = "its last.pt is a link loop (following its links never reaches a file)"
        elif path.is_symlink():
            problem = f"its last.pt is a broken link (to {os.readlink(path)}, which does not exist)"
        else:
            problem = "it has no last.pt (the checkpoint --resume continues from)"
        raise cannot_resume(run_dir, problem) from None
    if stat.S_ISDIR(mode):
        raise cannot_resume(run_dir, "its last.pt is a folder, not a checkpoint")
    if not stat.S_ISREG(mode):
        raise cannot_resume(run_dir, "its last.pt is not a regular file (a FIFO, socket or device)")
    try:
        ckpt = checkpoint.load(path)
    except FsanError as exc:
        raise cannot_resume(run_dir, exc.message) from None
    if not isinstance(ckpt.get("resume"), dict):
        raise cannot_resume(run_dir, f"{path} holds no training state")


def cannot_resume(run_dir: Path, problem: str) -> FsanError:
    return FsanError(f"cannot resume {run_dir}: {problem}; the run was left as it is",
                     f"Train a new run into another --out, or replace this one with "
                     f"`fsan train --out {run_dir} --overwrite`")


def resumed(run_dir: Path, data_dir: Path, micro_batch: int | None = None) -> tuple[Settings, Store, str]:
    """(settings, store, dataset) of the run in `run_dir`; --micro-batch may change how its
    batches are split (not what is learnt)."""

    info, cfg_path = read_run(run_dir)
    check_last(run_dir)  # before anything of the run is touched
    dataset = info["dataset"]
    cfg = load_settings(dataset, cfg_path)
    store = run_store(run_dir, Path(info.get("store", "")), dataset, Path(data_dir), cfg.data.clips)
    log(f"Resuming {run_dir} ({dataset}, data at {store.path})")
    if micro_batch is not None:
        before = cfg.train.micro_batch
        cfg = cfg.replace("train.micro_batch", micro_batch)
        if micro_batch != before:
            log(f"--micro-batch {micro_batch} (the run had {before or 'whole batches'}): "
                "the same gradients up to rounding, not bit for bit")
    return cfg, store, dataset


def run_store(run_dir: Path, recorded: Path, dataset: str, data_dir: Path, clips: int) -> Store:
    """The store a run trained on: the one its run.json records; where that is gone or was
    prepared again with another N_v, the dataset's under data_dir (the synthetic one of the
    run's N_v, generated again where absent)."""
    store = load_store(recorded) if store_exists(recorded) else None
    if store is not None and store.clips == clips:
        return store
    if dataset == "synthetic":
        return open_store(dataset, recorded.parent if store is not None else data_dir, clips)
    other = data_dir / dataset
    if store_exists(other) and (store is None or other.resolve() != recorded.resolve()):
        store = load_store(other)
    if store is None:
        store = open_store(dataset, data_dir, clips)  # the error that says to prepare it
    if store.clips != clips:
        raise FsanError(
            f"the run in {run_dir} trained on {clips} clips per video, but the data at {store.path} "
            f"now has {store.clips} (prepared again since)",
            f"Prepare the data again with --clips {clips} into another folder (`fsan prepare "
            f"--dataset {dataset} --clips {clips} --data-dir DIR ...`), then resume with --data-dir DIR",
        )
    return store


def write_failure(exc: BaseException, out_dir: Path, saved_step: int | None) -> FsanError | None:
    """A checkpoint or metrics write that a full disk or a read-only or locked folder refused:
    what to do, and what is kept (atomic writes leave nothing half-written); None otherwise."""
    problem = write_problem(exc)
    if problem is None:
        return None
    what, remedy = problem
    target = getattr(exc, "filename", None) or out_dir
    if saved_step is None:
        return FsanError(f"cannot write {target}: {what}; nothing of this run was kept",
                         f"{remedy}, or train into another --out")
    return FsanError(f"cannot write {target}: {what}; the last checkpoint, {out_dir / 'last.pt'} "
                     f"(step {saved_step}), is intact", f"{remedy}, then continue with: fsan train "
                     f"--resume {out_dir}")


def default_out(dataset: str) -> Path:
    return RUNS / f"{dataset}-{datetime.now():%Y%m%d-%H%M%S}"


def quiet_ranks() -> bool:
    """Under torchrun only rank 0 speaks."""
    return int(os.environ.get("RANK", "0")) > 0
