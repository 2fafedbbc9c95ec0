"""Issue 29, the training and writing side: `fsan train --resume` touches nothing of a run it
cannot continue (D1); a full disk is one `Error:` line in whatever form numpy or torch reports
it (D7); what a killed `fsan prepare` left beside its store is removed by the next (D12)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fsan_cli.app import app
from fsan_cli.core import errors
from tests.helpers import TINY_MODEL, set_args
from tests.test_prepare_cli import write_custom

SETS = set_args([*TINY_MODEL, "train.epochs=1"])
NUMPY_SHORT_WRITE = "81920 requested and 75744 written"  # ndarray.tofile's, errno None
NUMPY_FALLOCATE = "Not enough free space to write 34406400 bytes after offset 128"
TORCH_ZIP = "[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"


def cli(*args: str, **kwargs):
    return CliRunner().invoke(app, ["--device", "cpu", "-q", *map(str, args)], **kwargs)


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]


def disk(monkeypatch, free_bytes: int) -> None:
    """os.statvfs reports `free_bytes` left on every file system."""
    blocks = free_bytes // 4096
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(
        f_frsize=4096, f_bsize=4096, f_blocks=1 << 20, f_bfree=blocks, f_bavail=blocks))


# D1 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    result = cli("train", "--data-dir", data_dir, "--out", out, "--no-test", *SETS)
    assert result.exit_code == 0, result.stderr
    assert {p.name for p in out.iterdir()} >= {"config.toml", "run.json", "metrics.jsonl", "best.pt", "last.pt"}
    return out


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry under `folder` (links not followed): a link's target, a file's bytes."""
    seen: dict[str, object] = {}
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            p = Path(root) / name
            rel = str(p.relative_to(folder))
            seen[rel] = ("link", os.readlink(p)) if p.is_symlink() else "dir" if p.is_dir() else p.read_bytes()
    return seen


def spoil_last(run: Path, how: str) -> None:
    last = run / "last.pt"
    last.unlink()
    if how == "a broken link":
        last.symlink_to(run / "gone.pt")
    elif how == "a link loop":
        last.symlink_to(last)
    elif how == "a folder":
        last.mkdir()
        (last / "inside.txt").write_text("keep me")
    elif how == "a file with no training state":
        shutil.copy(run / "best.pt", last)


SPOILED = {
    "missing": "it has no last.pt (the checkpoint --resume continues from)",
    "a broken link": "its last.pt is a broken link (to {run}/gone.pt, which does not exist)",
    "a link loop": "its last.pt is a link loop (following its links never reaches a file)",
    "a folder": "its last.pt is a folder, not a checkpoint",
    "a file with no training state": "{run}/last.pt holds no training state",
}


@pytest.mark.parametrize("how", list(SPOILED))
def test_resume_without_a_usable_last_pt_touches_nothing(trained_run, data_dir, tmp_path, how):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    spoil_last(run, how)
    before = snapshot(run)
    result = cli("train", "--data-dir", data_dir, "--resume", run, "--no-test")
    assert result.exit_code == 1 and result.stdout == ""
    problem = SPOILED[how].format(run=run)
    assert result.stderr == (f"Error: cannot resume {run}: {problem}; the run was left as it is. Train a new "
                             f"run into another --out, or replace this one with `fsan train --out {run} "
                             "--overwrite`.\n")
    assert snapshot(run) == before


def test_a_run_whose_last_pt_is_missing_can_still_be_replaced_on_purpose(trained_run, data_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "last.pt").unlink()
    result = cli("train", "--data-dir", data_dir, "--out", run, "--overwrite", "--no-test", *SETS)
    assert result.exit_code == 0, result.stderr
    assert (run / "last.pt").is_file()


# D7 ------------------------------------------------------------------------------------------


def short_write(message: str):
    """np.save that writes part of the array, then fails as numpy does on a full disk."""
    real = np.save

    def save(path, array, *args, **kwargs):
        real(path, np.asarray(array).reshape(-1)[:1], *args, **kwargs)
        raise OSError(message)

    return save


def test_prepare_on_a_full_disk_short_write(tmp_path, monkeypatch):
    ann, feats = write_custom(tmp_path, [{"video": "a", "duration": 30, "query": "a man opens the door"}])
    monkeypatch.setattr(np, "save", short_write(NUMPY_SHORT_WRITE))
    disk(monkeypatch, 8192)
    out = tmp_path / "d" / "custom"
    result = cli("prepare", "--dataset", "custom", "--annotations", ann, "--features", feats,
                 "--data-dir", tmp_path / "d")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (f"Error: cannot write the store at {out}: no space is left on the disk. "
                             "Free some space on it, or choose another --out or --data-dir.\n")
    assert not (tmp_path / "d").exists() and leftovers(tmp_path) == []  # nor the --data-dir it made


def test_a_short_write_with_space_left_is_not_called_a_full_disk(tmp_path, monkeypatch):
    ann, feats = write_custom(tmp_path, [{"video": "a", "duration": 30, "query": "a man opens the door"}])
    monkeypatch.setattr(np, "save", short_write(NUMPY_SHORT_WRITE))
    disk(monkeypatch, 50 << 30)
    result = cli("prepare", "--dataset", "custom", "--annotations", ann, "--features", feats,
                 "--out", tmp_path / "s")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: unexpected OSError: {NUMPY_SHORT_WRITE}.")
    assert leftovers(tmp_path) == []


def test_the_synthetic_benchmark_generated_onto_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(np, "save", short_write(NUMPY_FALLOCATE))
    data = tmp_path / "d"
    result = cli("train", "--data-dir", data, "--out", tmp_path / "run", "--no-test", *SETS)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (f"Error: cannot write the store at {data / 'synthetic'}: no space is left on "
                             "the disk. Free some space on it, or choose another --data-dir.\n")
    assert leftovers(tmp_path) == [] and not (data / "synthetic").exists()


def test_train_when_torch_save_meets_a_full_disk(data_dir, tmp_path, monkeypatch):
    def zip_writer_fails(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError(TORCH_ZIP)

    monkeypatch.setattr(torch, "save", zip_writer_fails)
    disk(monkeypatch, 0)
    out = tmp_path / "run"
    result = cli("train", "--data-dir", data_dir, "--out", out, "--no-test", *SETS)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (f"Error: cannot write {out / 'best.pt'}: no space is left on the disk; nothing "
                             "of this run was kept. Free some space on it, or train into another --out.\n")
    assert not out.exists() and leftovers(tmp_path) == []


def test_out_of_space_tells_a_full_disk_from_a_bug(tmp_path, monkeypatch):
    torch_error = RuntimeError(TORCH_ZIP)
    disk(monkeypatch, 2 << 20)  # 2 MB left: not full
    assert errors.out_of_space(torch_error, tmp_path) is torch_error
    disk(monkeypatch, 4096)
    full = errors.out_of_space(torch_error, tmp_path, tmp_path / "x.pt")
    assert isinstance(full, OSError) and full.errno == errno.ENOSPC and full.filename == str(tmp_path / "x.pt")
    assert errors.out_of_space(KeyError("x"), tmp_path) .__class__ is KeyError  # not a write's failure
    assert errors.write_problem(OSError(NUMPY_FALLOCATE)) == errors.WRITE_PROBLEMS[errno.ENOSPC]


@pytest.fixture
def small_disk(tmp_path):
    """A real 300 KB tmpfs (root only); skipped where it cannot be mounted."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)],
                              capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("cannot run mount")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=20)


def test_a_real_full_disk(small_disk, tmp_path):
    env = {**os.environ, "FSAN_DATA_DIR": str(small_disk / "d")}
    fsan = [sys.executable, "-m", "fsan_cli", "--device", "cpu", "-q"]
    done = subprocess.run([*fsan, "train", "--out", tmp_path / "run", "--no-test", *SETS],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (f"Error: cannot write the store at {small_disk / 'd' / 'synthetic'}: no space is "
                           "left on the disk. Free some space on it, or choose another --data-dir.\n")
    assert list(small_disk.iterdir()) == []
    # a run folder on a full disk: the store is elsewhere, the checkpoints cannot be written
    ann, feats = write_custom(tmp_path, [{"video": "a", "duration": 30, "query": "a man opens the door"}])
    (small_disk / "filler").write_bytes(b"\0" * (280 << 10))
    done = subprocess.run([*fsan, "prepare", "--dataset", "custom", "--annotations", ann, "--features", feats,
                           "--clips", "64", "--out", small_disk / "s"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (f"Error: cannot write the store at {small_disk / 's'}: no space is left on the "
                           "disk. Free some space on it, or choose another --out or --data-dir.\n")
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


# D12 -----------------------------------------------------------------------------------------


def dead_pid() -> int:
    """The PID of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_prepare_removes_what_a_killed_prepare_left(tmp_path):
    ann, feats = write_custom(tmp_path, [{"video": "a", "duration": 30, "query": "a man opens the door"}])
    data = tmp_path / "d"
    data.mkdir()
    killed = data / f".custom.tmp-{dead_pid()}-5hdxz3g5"
    killed.mkdir()
    (killed / "features.npy").write_bytes(b"\0" * 4096)
    running = data / f".custom.tmp-{os.getpid()}-abcdefgh"  # a live writer's: kept
    running.mkdir()
    other = data / ".other.tmp-1-abcdefgh"  # another store's: kept
    other.mkdir()
    result = cli("prepare", "--dataset", "custom", "--annotations", ann, "--features", feats,
                 "--data-dir", data)
    assert result.exit_code == 0, result.stderr
    assert not killed.exists() and running.is_dir() and other.is_dir()
    assert (data / "custom" / "manifest.json").is_file()
    # refused for an existing store, the next prepare still clears them
    killed.mkdir()
    result = cli("prepare", "--dataset", "custom", "--annotations", ann, "--features", feats,
                 "--data-dir", data)
    assert result.exit_code == 1 and "already exists" in result.stderr
    assert not killed.exists()


def test_a_killed_prepare_leaves_a_folder_the_next_one_removes(tmp_path):
    """kill -9 during the store's write, for real; the next prepare into the same place removes
    the folder."""
    ann, feats = write_custom(tmp_path, [{"video": "a", "duration": 30, "query": "a man opens the door"}])
    data = tmp_path / "d"
    script = ("import os, signal, numpy as np, sys\n"
              "real = np.save\n"
              "def save(*a, **k):\n"
              "    real(*a, **k)\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n"
              "np.save = save\n"
              "from fsan_cli.entry import main\n"
              "sys.argv = ['fsan', '-q', 'prepare', '--dataset', 'custom', '--annotations', sys.argv[1],"
              " '--features', sys.argv[2], '--data-dir', sys.argv[3]]\n"
              "main()\n")
    done = subprocess.run([sys.executable, "-c", script, str(ann), str(feats), str(data)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr
    left = [p.name for p in data.iterdir()]
    assert len(left) == 1 and left[0].startswith(".custom.tmp-"), left
    result = cli("prepare", "--dataset", "custom", "--annotations", ann, "--features", feats,
                 "--data-dir", data)
    assert result.exit_code == 0, result.stderr
    assert [p.name for p in data.iterdir()] == ["custom"]
