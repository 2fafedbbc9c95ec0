"""An adversarial review's path faults: a lock file that is a link or a FIFO (a planted
`.lock -> FILE` had FILE truncated by `fsan train` or `fsan extract`), a path the file system
refuses (a name over its limit, a link loop) said as one Error, not "unexpected"; a prepared
store readable as its folder's umask says (not mkdtemp's 0700); `fsan export` keeping the
store's extractor record, so that `fsan ground` checks it as for a file of `fsan extract`."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
from typer.testing import CliRunner

from fsan_cli.app import app
from fsan_cli.data.store import Query, write_store
from fsan_cli.video import record as extractor
from tests.helpers import TINY_MODEL, set_args

SETS = set_args([*TINY_MODEL, "train.epochs=1"])
RECORD = {"kind": "clip-image", "library": "transformers", "model": "/models/clip", "sha256": "ab" * 32,
          "image_size": 32, "dim": 4, "fps": 2.0, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def cli(*args: str):
    result = CliRunner().invoke(app, ["--device", "cpu", "-q", *map(str, args)])
    assert "Traceback" not in result.stderr
    return result


def test_a_run_folders_lock_that_is_a_link_is_refused_and_its_target_kept(data_dir, tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(victim)
    result = cli("train", "--data-dir", data_dir, "--out", out, *SETS)
    assert result.exit_code == 1
    assert result.stderr == (f"Error: the lock file {out}/.lock is a link, which fsan does not follow. "
                             f"Remove the link (rm {out}/.lock) and run again.\n")
    assert victim.read_text() == "keep me\n"


def test_a_lock_that_is_a_fifo_is_refused_without_waiting(data_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    os.mkfifo(out / ".lock")
    result = cli("train", "--data-dir", data_dir, "--out", out, *SETS)
    assert result.exit_code == 1
    assert result.stderr == (f"Error: the lock file {out}/.lock is not a regular file (a FIFO, socket or "
                             f"device). Remove it (rm {out}/.lock) and run again.\n")


def test_a_name_too_long_for_the_file_system_is_one_error(tmp_path):
    path = tmp_path / ("y" * 300 + ".jsonl")
    result = cli("evaluate", "--predictions", path)
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {path}: the name is too long for the file system. "
                             "Use a shorter name, or use another path.\n")


def test_a_link_loop_is_one_error(tmp_path):
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop.name)
    result = cli("evaluate", "--predictions", loop)
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {loop}: it is a link loop (following its links never reaches a file). "
                             "Pass the file itself, or use another path.\n")


def _store(root: Path) -> Path:
    queries = [Query("v0", "a man", 10.0, [[1.0, 2.0]]), Query("v1", "a dog", 10.0, [[3.0, 4.0]])]
    write_store(root / "custom", {"dataset": "custom", "extractor": RECORD},
                np.ones((2, 6, 4), np.float32),
                [{"video": "v0", "duration": 10.0, "rows": 6}, {"video": "v1", "duration": 10.0, "rows": 6}],
                ["<pad>", "<unk>", "a"], np.zeros((3, 4), np.float32), {"train": queries})
    return root / "custom"


def test_a_prepared_store_is_readable_as_the_umask_says(tmp_path):
    old = os.umask(0o022)
    try:
        store = _store(tmp_path)
    finally:
        os.umask(old)
    assert store.stat().st_mode & 0o777 == 0o755


def test_export_keeps_the_stores_extractor_record(tmp_path):
    _store(tmp_path)
    out = tmp_path / "v0.h5"
    result = cli("export", "v0", "-d", "custom", "--data-dir", tmp_path, "--out", out)
    assert result.exit_code == 0, result.stderr
    with h5py.File(out, "r") as h5:
        assert extractor.from_attrs(h5["features"].attrs, str(out)) == RECORD



def test_a_lock_file_naming_a_live_process_that_holds_nothing_is_taken_over(data_dir, tmp_path):
    """A killed run's lock file whose PID was reused since (here: this very test's parent, alive)
    blocks nothing: the quick check probes the lock, it does not trust the PID."""
    from fsan_cli.core.lock import acquire, holder

    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(f"{os.getppid()}\n")  # alive, but holding no lock
    assert holder(out / ".lock") is None
    result = cli("train", "--data-dir", data_dir, "--out", out, "--overwrite", *SETS)
    assert result.exit_code == 0, result.stderr
    held = acquire(tmp_path / "x.lock", lambda pid: AssertionError(pid), "")
    try:  # a lock really held is still said, with its holder's PID
        assert holder(tmp_path / "x.lock") is None  # this process's own
        (tmp_path / "y.lock").write_text("1\n")
        import fcntl
        import subprocess
        import sys
        code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
                "os.pwrite(fd, f'{os.getpid()}\\n'.encode(), 0); fcntl.flock(fd, fcntl.LOCK_EX); "
                "print('held', flush=True); time.sleep(30)")
        child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "y.lock")], stdout=subprocess.PIPE)
        try:
            assert child.stdout.readline().strip() == b"held"
            assert holder(tmp_path / "y.lock") == child.pid
        finally:
            child.kill()
            child.wait()
        assert fcntl is not None
    finally:
        held.release()


def test_an_extractor_record_at_an_impossible_frame_rate_is_damaged():
    import pytest

    from fsan_cli.core.errors import FsanError

    with pytest.raises(FsanError, match=r"fps is 1000000000.0, not frames per second in \[0.01, 120\]"):
        extractor.check({**RECORD, "fps": 1e9}, "the checkpoint x.pt")
    assert extractor.check({**RECORD, "fps": 120.0}, "the checkpoint x.pt")["fps"] == 120.0


def test_export_to_stdout_is_bad_usage(tmp_path):
    result = CliRunner().invoke(app, ["export", "v", "--out", "-", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and not (tmp_path / "-").exists()
    assert result.stderr.endswith("Error: --out - would write HDF5 onto stdout, which carries the path. "
                                  "Give a file name.\n")


def test_ground_says_what_a_video_path_is(tmp_path):
    loop = tmp_path / "loop.mp4"
    loop.symlink_to(loop)
    for path, what in ((tmp_path / "nope.mp4", "does not exist"), (tmp_path, "is a folder"),
                       (loop, "is a link loop (following its links never reaches a file)")):
        result = cli("ground", path, "a person opens the door", "--checkpoint", tmp_path / "x.pt")
        assert result.exit_code == 1
        assert result.stderr == (f"Error: video file {path} {what}. Pass the path of a video file or of "
                                 "an HDF5 feature file.\n")


def test_evaluate_on_sentence_only_data_says_there_is_nothing_to_score(tmp_path):
    queries = [Query(f"v{i}", "a person opens the door", 10.0) for i in range(3)]
    write_store(tmp_path / "custom", {"dataset": "custom"}, np.zeros((3, 4, 8), np.float32),
                [{"video": f"v{i}", "duration": 10.0, "rows": 4} for i in range(3)],
                ["<pad>", "<unk>", "a"], np.zeros((3, 8), np.float32), {"train": queries})
    result = cli("evaluate", "-d", "custom", "--data-dir", tmp_path, "--baseline", "prior")
    assert result.exit_code == 1
    assert result.stderr == (f"Error: the data at {tmp_path / 'custom'} has no times to score: its sentences "
                             'carry none (the weakly supervised case). Add "times" and "split": "test" to the '
                             "lines to score and prepare again, or ground the videos with fsan ground.\n")
