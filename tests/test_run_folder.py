"""`fsan train`'s run folder: one training at a time (a lock naming the holder's PID, a stale
one taken over), --overwrite that keeps the old run until the new one has a checkpoint and
replaces run folders only, and what killed writes leave behind cleared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fsan_cli.app import app
from fsan_cli.train import loop as training
from fsan_cli.train import runs
from tests.helpers import ROOT, TINY_MODEL, set_args

SETS = set_args([*TINY_MODEL, "train.epochs=1"])
RUN_FILES = ["best.pt", "config.toml", "last.pt", "metrics.jsonl", "run.json"]

# Holds DIR/.lock as fsan train does (flock, its PID inside) until its stdin closes.
HOLDER = textwrap.dedent("""
    import fcntl, os, sys
    fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{os.getpid()}\\n".encode())
    print("locked", flush=True)
    sys.stdin.read()
""")
# Dies by SIGKILL in the middle of an atomic checkpoint write.
KILLED_WRITE = textwrap.dedent("""
    import os, sys
    from fsan_cli.core.atomic import atomic_write
    def write(fh):
        fh.write(b"half a checkpoint")
        fh.flush()
        os.kill(os.getpid(), 9)
    atomic_write(sys.argv[1], write, binary=True)
""")


def train(data_dir: Path, *args: str):
    return CliRunner().invoke(app, ["--device", "cpu", "-q", "train", "--data-dir", str(data_dir),
                                    "--no-test", *SETS, *args])


def files(folder: Path) -> dict[str, bytes]:
    """The folder's files but its lock."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != ".lock"}


def python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, text=True, **kwargs)


@pytest.fixture
def held(tmp_path):
    """A run folder whose lock another live process holds; yields (folder, pid)."""
    out = tmp_path / "run"
    out.mkdir()
    proc = python(HOLDER, str(out), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout.readline() == "locked\n"
    yield out, proc.pid
    proc.stdin.close()
    proc.wait(timeout=30)


def in_use(out: Path, pid: int, fix: str = ", or choose another --out") -> str:
    return (f"Error: run folder {out} is in use by process {pid}, another fsan train. Wait for it "
            f"to end (`kill {pid}` stops it and keeps its last checkpoint){fix}.\n")


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_second_training_into_a_locked_folder_names_the_holder(data_dir, held, overwrite):
    out, pid = held
    result = train(data_dir, "--out", str(out), *overwrite)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == in_use(out, pid)
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_the_lock_is_taken_after_the_early_check_too(data_dir, tmp_path, monkeypatch):
    """Two runs that both passed the early check: the second finds the lock of the first."""
    out = tmp_path / "run"
    monkeypatch.setattr(runs, "check_out", lambda out, overwrite: None)  # both got past it
    from fsan_cli.train.lock import lock_folder

    out.mkdir()
    lock = lock_folder(out)
    try:
        result = train(data_dir, "--out", str(out))
    finally:
        lock.release()
    assert result.exit_code == 1
    assert result.stderr == in_use(out, os.getpid())
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []


def test_resume_of_a_run_in_progress_is_refused(data_dir, tmp_path):
    out = tmp_path / "run"
    assert train(data_dir, "--out", str(out)).exit_code == 0
    before = files(out)
    proc = python(HOLDER, str(out), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == "locked\n"
        result = CliRunner().invoke(app, ["--device", "cpu", "-q", "train", "--resume", str(out),
                                          "--data-dir", str(data_dir), "--no-test"])
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert result.exit_code == 1
    assert result.stderr == in_use(out, proc.pid, fix="")
    assert files(out) == before


def test_a_stale_lock_of_a_killed_run_is_taken_over(data_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    gone = python("pass")
    gone.wait()
    (out / ".lock").write_text(f"{gone.pid}\n")  # what a run killed by SIGKILL leaves
    result = train(data_dir, "--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (f"Warning: {out}/.lock was left by process {gone.pid}, which ended "
                             "without removing it (killed?); taking the lock over\n")
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES  # the lock file went with the run


def test_overwrite_then_ctrl_c_before_the_first_checkpoint_keeps_the_old_run(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert train(data_dir, "--out", str(out)).exit_code == 0
    before = files(out)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "one_step", interrupted)
    result = train(data_dir, "--out", str(out), "--overwrite", "--set", "train.epochs=2")
    assert result.exit_code == 130
    assert result.stderr == (f"Error: interrupted before the new run's first checkpoint; the run in "
                             f"{out} is as it was. Run the command again.\n")
    assert files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing left beside it


def test_overwrite_replaces_the_old_run_at_the_new_runs_first_checkpoint(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert train(data_dir, "--out", str(out)).exit_code == 0
    (out / "notes.txt").write_text("mine")
    old = files(out)
    seen: list[dict[str, bytes]] = []
    real, calls = training.one_step, []

    def step_then_stop(run, *args):
        calls.append(1)
        seen.append(files(out))
        if len(calls) == 3:  # epoch 2 of the new run: epoch 1 saved its checkpoints
            raise KeyboardInterrupt
        return real(run, *args)

    monkeypatch.setattr(training, "one_step", step_then_stop)
    result = train(data_dir, "--out", str(out), "--overwrite", "--set", "train.epochs=2")
    assert result.exit_code == 130
    assert f"Continue with: fsan train --resume {out}\n" in result.stderr
    assert seen[0] == seen[1] == old  # the old run, whole, while the new one had no checkpoint
    assert sorted(p.name for p in out.iterdir()) == sorted(["notes.txt", *RUN_FILES])
    assert "epochs = 2" in (out / "config.toml").read_text()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    resumed = CliRunner().invoke(app, ["--device", "cpu", "-q", "train", "--resume", str(out),
                                       "--data-dir", str(data_dir), "--no-test", "--json"])
    assert resumed.exit_code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["steps"] == 4


def test_overwrite_refuses_a_folder_that_is_not_a_run(data_dir, tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "metrics.jsonl").write_text("my own metrics\n")
    result = train(data_dir, "--out", str(out), "--overwrite")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (f"Error: {out} is not a run folder (it has no run.json or config.toml), "
                             "so --overwrite does not replace it. Choose another --out.\n")
    assert files(out) == {"metrics.jsonl": b"my own metrics\n", "thesis.tex": b"years of work"}


def _killed_write(path: Path) -> None:
    proc = python(KILLED_WRITE, str(path))
    assert proc.wait(timeout=60) == -9
    assert [p.name.startswith(f".{path.name}.") for p in path.parent.iterdir()].count(True) == 1


def test_remove_run_files_clears_what_a_killed_write_left(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    _killed_write(out / "last.pt")
    (out / "config.toml").write_text("")
    runs.remove_run_files(out)
    assert not out.exists()


def test_a_resumed_run_clears_what_a_killed_write_left(data_dir, tmp_path):
    out = tmp_path / "run"
    assert train(data_dir, "--out", str(out)).exit_code == 0
    _killed_write(out / "last.pt")
    result = CliRunner().invoke(app, ["--device", "cpu", "train", "--resume", str(out),
                                      "--data-dir", str(data_dir), "--no-test"])
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES
    assert f"Removed what an interrupted run left in {out}: 1 temporary files" in result.stderr


def test_under_torchrun_only_rank_0_checks_and_locks_the_folder(held, monkeypatch):
    """Rank 1 starts a moment after rank 0 locked the folder: it neither checks nor locks it."""
    out, _ = held
    monkeypatch.setenv("RANK", "1")
    runs.check_out(out, overwrite=False)
    with runs.run_folder(out, resume=False, overwrite=False) as folder:
        assert folder.work == out and not folder.replacing
