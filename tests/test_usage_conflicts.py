"""Options that cannot go together are bad usage (issue 29, D16): exit code 2 and the usage
line, the --help hint and one `Error:` line, as typer prints its own usage errors; nothing is
read or written first."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fsan_cli.app import app


def usage(command: str, error: str) -> str:
    return f"Usage: fsan {command} [OPTIONS]\nTry 'fsan {command} --help' for help.\n\nError: {error}\n"


CONFLICTS = [
    (["evaluate", "--checkpoint", "x.pt", "--predictions", "p.jsonl"], "evaluate",
     "pass one of --checkpoint, --predictions or --baseline (got --checkpoint and --predictions). "
     "For example: fsan evaluate --dataset didemo --predictions preds.jsonl."),
    (["evaluate", "--checkpoint", "x.pt", "--predictions", "p.jsonl", "--baseline", "prior"], "evaluate",
     "pass one of --checkpoint, --predictions or --baseline (got --checkpoint and --predictions and "
     "--baseline). For example: fsan evaluate --dataset didemo --predictions preds.jsonl."),
    (["evaluate", "--baseline", "prior", "--metric", "miou", "--json"], "evaluate",
     "--metric and --json both choose what stdout carries. Pass only one."),
    (["evaluate", "--baseline", "prior", "--metric", "miou", "--by-length"], "evaluate",
     "--metric prints one number, which has no breakdown by video length. Drop --by-length and --plot, "
     "or --metric."),
    (["evaluate", "--baseline", "prior", "--metric", "miou", "--plot", "p.png"], "evaluate",
     "--metric prints one number, which has no breakdown by video length. Drop --by-length and --plot, "
     "or --metric."),
    (["evaluate", "--baseline", "prior", "--save-predictions", "-"], "evaluate",
     "--save-predictions - would mix predictions with the results on stdout. Give a file name."),
    (["train", "--seeds", "0,1", "--resume", "runs/x"], "train",
     "--seeds trains and tests new runs, so --resume cannot go with it. Drop --resume, or train one "
     "seed at a time."),
    (["train", "--seeds", "0,1", "--no-test"], "train",
     "--seeds trains and tests new runs, so --no-test cannot go with it. Drop --no-test, or train one "
     "seed at a time."),
    (["train", "--resume", "runs/x", "--size", "base"], "train",
     "--resume continues a run with its own settings, so --size cannot go with it. Drop --size, or "
     "start a new run without --resume."),
    (["train", "--resume", "runs/x", "--out", "runs/y", "--set", "train.lr=1"], "train",
     "--resume continues a run with its own settings, so --set and --out cannot go with it. Drop --set "
     "and --out, or start a new run without --resume."),
    (["ablate", "--json", "--csv"], "ablate", "--json and --csv both choose what stdout carries. Pass only one."),
    (["prepare", "--dataset", "didemo", "--annotations", "a.json", "--videos", "v"], "prepare",
     "--videos extracts features for --dataset custom, not didemo. Pass the official feature file of "
     "didemo with --features."),
    (["prepare", "--dataset", "custom", "--annotations", "a.jsonl"], "prepare",
     "--features is missing. Pass the HDF5 feature file, or (custom) --videos DIR."),
]


@pytest.mark.parametrize(("args", "command", "error"), CONFLICTS, ids=[" ".join(c[0][:4]) for c in CONFLICTS])
def test_conflicting_options_are_bad_usage(tmp_path, monkeypatch, args, command, error):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["--device", "cpu", *args], env={"COLUMNS": "200", "FSAN_DATA_DIR": "d"})
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == usage(command, error)
    assert list(tmp_path.iterdir()) == []  # nothing read, nothing made
