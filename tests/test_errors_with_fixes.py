"""Failures whose cause is the machine or the user's files get one `Error:` line that says what
to do, never "unexpected X ... report it as a bug": a full disk or a read-only path while
training, preparing or saving predictions (nothing half-written kept), a latin-1 annotation
file, HDF5 dimensions too large for the RAM, and Ctrl-C while fsan starts."""

from __future__ import annotations

import errno
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fsan_cli import app as app_module
from fsan_cli.app import app
from fsan_cli.core import memory
from fsan_cli.core.atomic import atomic_write
from fsan_cli.evaluate import predictions
from fsan_cli.train import loop as training
from tests.helpers import ROOT, TINY_MODEL, set_args
from tests.test_prepare_cli import DIM, write_custom

SETS = set_args([*TINY_MODEL, "train.epochs=1"])
PROBLEMS = {
    errno.ENOSPC: ("No space left on device", "no space is left on the disk", "Free some space on it"),
    errno.EROFS: ("Read-only file system", "the file system is read-only", "Make it writable"),
    errno.EACCES: ("Permission denied", "permission denied", "Fix the permissions"),
}


def cli(*args: str, **kwargs):
    return CliRunner().invoke(app, ["--device", "cpu", "-q", *map(str, args)], **kwargs)


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]


@pytest.mark.parametrize("code", list(PROBLEMS))
def test_a_refused_checkpoint_write_before_the_first_checkpoint(data_dir, tmp_path, monkeypatch, code):
    strerror, what, fix = PROBLEMS[code]

    def refused(obj, fh, *args, **kwargs):
        fh.write(b"half a checkpoint")
        raise OSError(code, strerror)

    monkeypatch.setattr(torch, "save", refused)
    out = tmp_path / "run"
    result = cli("train", "--data-dir", data_dir, "--out", out, "--no-test", *SETS)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (f"Error: cannot write {out}/best.pt: {what}; nothing of this run was kept. "
                             f"{fix}, or train into another --out.\n")
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_refused_metrics_write_after_a_checkpoint_keeps_it_and_says_resume(data_dir, tmp_path, monkeypatch):
    real, calls = training.atomic_write_text, []

    def read_only_on_the_second(path, text):
        calls.append(path)
        if len(calls) < 2:
            return real(path, text)

        def write(fh):
            fh.write(text[:5])
            raise OSError(errno.EROFS, "Read-only file system")

        atomic_write(path, write)

    monkeypatch.setattr(training, "atomic_write_text", read_only_on_the_second)
    out = tmp_path / "run"
    result = cli("train", "--data-dir", data_dir, "--out", out, "--no-test", *SETS, "--set", "train.epochs=2")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: cannot write {out}/metrics.jsonl: the file system is read-only; the last checkpoint, "
        f"{out}/last.pt (step 2), is intact. Make it writable, then continue with: fsan train --resume {out}.\n")
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1 and leftovers(tmp_path) == []
    monkeypatch.setattr(training, "atomic_write_text", real)
    resumed = cli("train", "--resume", out, "--data-dir", data_dir, "--no-test")
    assert resumed.exit_code == 0, resumed.stderr
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_full_disk_while_preparing_leaves_no_store(tmp_path, monkeypatch):
    ann, feats = write_custom(tmp_path, [{"video": "a", "duration": 30, "query": "a man opens the door"}])
    real = np.save

    def full(path, array, *args, **kwargs):
        real(path, array[:1], *args, **kwargs)  # part of it reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    out = tmp_path / "store"
    result = cli("prepare", "--dataset", "custom", "--annotations", ann, "--features", feats, "--out", out)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (f"Error: cannot write the store at {out}: no space is left on the disk. "
                             "Free some space on it, or choose another --out or --data-dir.\n")
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_refused_save_predictions_keeps_the_old_file(data_dir, tmp_path, monkeypatch, code):
    strerror, what, fix = PROBLEMS[code]
    out = tmp_path / "preds.jsonl"
    out.write_text("the old predictions\n")
    real, rows = predictions._dumps, []

    def refused_after_two(row):
        rows.append(row)
        if len(rows) > 2:
            raise OSError(code, strerror)
        return real(row)

    monkeypatch.setattr(predictions, "_dumps", refused_after_two)
    result = cli("evaluate", "--data-dir", data_dir, "--baseline", "prior", "--save-predictions", out,
                 "--overwrite", "--metric", "miou")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (f"Error: cannot write {out}: {what}. {fix}, or pass another "
                             "--save-predictions FILE.\n")
    assert out.read_text() == "the old predictions\n" and leftovers(tmp_path) == []


def test_any_other_refused_write_is_one_error_line_too(capsys):
    from fsan_cli.core.errors import handle_errors

    @handle_errors
    def command():
        raise OSError(errno.ENOSPC, "No space left on device", "/data/x.npy")

    with pytest.raises(Exception) as info:
        command()
    assert getattr(info.value, "exit_code", None) == 1
    assert capsys.readouterr().err == ("Error: /data/x.npy: no space is left on the disk. Free some space "
                                       "on it, or use another path.\n")


def test_a_latin1_annotation_file_names_the_line_and_byte(tmp_path):
    ann, feats = write_custom(tmp_path, [])
    line = json.dumps({"video": "a", "duration": 30, "query": "a man opens the cafe door"})
    ann.write_bytes((line + "\n" + line.replace("cafe", "caf\xe9") + "\n").encode("latin-1"))
    result = cli("prepare", "--dataset", "custom", "--annotations", ann, "--features", feats,
                 "--out", tmp_path / "s")
    assert result.exit_code == 1 and result.stdout == ""
    column = line.index("cafe") + 4
    assert result.stderr == (
        f"Error: {ann}:2 is not UTF-8 text (byte 0xe9 at column {column}: latin-1 or another 8-bit "
        f"encoding?). Save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 {ann} > queries.utf8.jsonl`.\n")


def test_hdf5_dimensions_too_large_for_the_ram_are_refused_before_reading(tmp_path):
    ann, _ = write_custom(tmp_path, [{"video": "a", "duration": 30, "query": "a man opens the door"}])
    feats = tmp_path / "huge.h5"
    with h5py.File(feats, "w") as h5:  # 4 TB declared, a few KB on disk
        h5.create_dataset("a", shape=(2**28, 4096), dtype=np.float32, chunks=(1024, 64))
    result = cli("prepare", "--dataset", "custom", "--annotations", ann, "--features", feats,
                 "--out", tmp_path / "s")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith(f"Error: video a in {feats} (268,435,456 x 4096 float32): "
                                    "4,096.0 GB of RAM needed, ")
    assert result.stderr.endswith(" free. Check the feature file (its dimensions look wrong), or prepare "
                                  "on a machine with more memory.\n")
    assert not (tmp_path / "s").exists()


def test_pooled_features_too_large_for_the_ram_are_refused_before_reading(tmp_path, monkeypatch):
    ann, feats = write_custom(tmp_path, [{"video": v, "duration": 30, "query": "a man opens the door"}
                                         for v in "abc"])
    monkeypatch.setattr(memory, "available_bytes", lambda: 40 * DIM * 4 + 1)  # video a fits, all do not
    result = cli("prepare", "--dataset", "custom", "--annotations", ann, "--features", feats,
                 "--out", tmp_path / "s")
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: the prepared features (3 videos x 32 clips x 16 dims): 0.0 MB of RAM needed, 0.0 MB free. "
        "Prepare fewer videos (--limit-videos), clips (--clips) or dims (--pca), or on a machine with "
        "more memory.\n")


INTERRUPTED = "Error: interrupted while starting; nothing was done. Run the command again.\n"
# A real SIGINT, sent by the process to itself when `module` starts to load, then `fsan ...argv`
# as the console script runs it.
CTRL_C_AT = textwrap.dedent("""
    import os, signal, sys
    module, argv = sys.argv[1], sys.argv[2:]

    class CtrlC:
        def find_spec(self, name, path=None, target=None):
            if name == module:
                os.kill(os.getpid(), signal.SIGINT)
            return None

    sys.meta_path.insert(0, CtrlC())
    sys.argv = ["fsan", *argv]
    from fsan_cli.app import main
    sys.exit(main())
""")


@pytest.mark.parametrize("module", ["typer", "fsan_cli.commands.train", "fsan_cli.core.output"])
def test_ctrl_c_while_the_modules_load_is_one_line(module):
    # SIGINT as a terminal leaves it, even where the tests run as a background job (SIGINT ignored)
    proc = subprocess.run([sys.executable, "-c", CTRL_C_AT, module, "train", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert (proc.returncode, proc.stdout, proc.stderr) == (130, "", INTERRUPTED)


def test_ctrl_c_while_the_arguments_are_parsed_is_one_line(monkeypatch, capsys):
    """Typer ends a Ctrl-C before the command's own handler with exit 130 and no word."""
    @functools.wraps(app_module.app.registered_callback.callback)
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(app_module.app.registered_callback, "callback", ctrl_c)
    monkeypatch.setattr(sys, "argv", ["fsan", "--device", "cpu", "train", "--help"])
    with pytest.raises(SystemExit) as info:
        app_module.main()
    assert info.value.code == 130
    assert capsys.readouterr().err == INTERRUPTED
