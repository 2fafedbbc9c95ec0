"""Damaged or unusual inputs on the model and data side get one `Error:` line naming what is wrong
(never "unexpected ... report it as a bug", never a half-written file): a damaged span prior
(and --no-span-prior, which does not read it), a checkpoint with damaged fields or that is not a
regular file, custom JSONL with null or reserved values, malformed model moments in a
predictions file, and --plot onto an existing file."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fsan_cli.app import app
from fsan_cli.core import checkpoint
from fsan_cli.core.errors import FsanError
from fsan_cli.predict.predictor import Predictor
from tests.helpers import TINY_MODEL, make_store, run_evaluate, train_tiny
from tests.test_evaluate_cli import PREDICTIONS, TEST, TRAIN
from tests.test_prepare_cli import write_custom


def cli(*args, env: dict | None = None):
    return CliRunner().invoke(app, ["--device", "cpu", *map(str, args)], env={"COLUMNS": "200", **(env or {})})


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run on the tiny synthetic store: (data root, best.pt, a one-video feature file)."""
    root = tmp_path_factory.mktemp("faults")
    store, best = train_tiny(root, root / "runs" / "tiny", [*TINY_MODEL, "train.epochs=1"])
    video = root / "v.h5"
    with h5py.File(video, "w") as h5:
        h5["features"] = np.asarray(store.features[0])
        h5.attrs["duration"] = 30.0
    return root, best, video


def edited(best: Path, path: Path, edit) -> Path:
    ckpt = checkpoint.load(best)
    edit(ckpt)
    torch.save(ckpt, path)
    return path


def prior_entry(clips: int, **changes) -> dict:
    log_prior = np.triu(np.full((clips, clips), np.log(2.0 / (clips * (clips + 1))), np.float32))
    return {"log_prior": torch.from_numpy(log_prior), "weight": 0.05, "choices": [[0.0, 1.0], [0.05, 2.0]],
            "moments": 10, "chosen_on": "val", **changes}


# ----------------------------------------------------------------------------- D6: the span prior

DAMAGED_PRIORS = {
    "nan": lambda clips: prior_entry(clips, log_prior=torch.full((clips, clips), float("nan"))),
    "tensor": lambda clips: torch.zeros(clips, clips),  # the entry itself a tensor, not an object
    "list": lambda clips: [1, 2],
    "huge weight": lambda clips: prior_entry(clips, weight=1e30),  # train picks weights <= 2
    "weight 101": lambda clips: prior_entry(clips, weight=101.0),
    "positive log-prior": lambda clips: prior_entry(clips, log_prior=torch.full((clips, clips), 1e38)),
}


@pytest.mark.parametrize("kind", list(DAMAGED_PRIORS))
def test_a_damaged_span_prior_is_said_and_no_span_prior_answers_without_reading_it(trained, tmp_path, kind):
    root, best, video = trained

    def damage(ckpt):
        ckpt["span_prior"] = DAMAGED_PRIORS[kind](int(ckpt["data"]["clips"]))

    path = edited(best, tmp_path / "damaged.pt", damage)
    want = (f"Error: the span prior stored in {path} is damaged. Answer without it (--no-span-prior), "
            "or train again.")
    with pytest.raises(FsanError, match="is damaged"):
        Predictor.load(path, torch.device("cpu"))
    assert Predictor.load(path, torch.device("cpu"), span_prior=False).span_prior is None
    grounded = cli("ground", video, "a person opens the door", "--checkpoint", path, "--json")
    assert (grounded.exit_code, last_line(grounded)) == (1, want)
    scored = cli("evaluate", "--data-dir", root, "--checkpoint", path, "--metric", "miou")
    assert (scored.exit_code, last_line(scored)) == (1, want)
    # the advice works: the checkpoint's model alone answers, as for the undamaged checkpoint
    plain = cli("ground", video, "a person opens the door", "--checkpoint", best, "--json", "--no-span-prior")
    grounded = cli("ground", video, "a person opens the door", "--checkpoint", path, "--json", "--no-span-prior")
    assert grounded.exit_code == 0, grounded.stderr
    assert json.loads(grounded.stdout)["moments"] == json.loads(plain.stdout)["moments"]
    scored = cli("evaluate", "--data-dir", root, "--checkpoint", path, "--metric", "miou", "--no-span-prior")
    assert scored.exit_code == 0, scored.stderr


def test_a_sane_span_prior_still_loads(trained, tmp_path):
    _, best, _ = trained
    path = edited(best, tmp_path / "ok.pt", lambda c: c.__setitem__("span_prior", prior_entry(int(c["data"]["clips"]),
                                                                                               weight=2.0)))
    assert Predictor.load(path, torch.device("cpu")).span_prior.weight == 2.0


# ----------------------------------------------------------------------------- D14: checkpoint fields

DAMAGED_FIELDS = {
    "no data": (lambda c: c.pop("data"), 'it has no "data"'),
    "feature_dim x": (lambda c: c["data"].__setitem__("feature_dim", "x"),
                      "its data.feature_dim is 'x', not a whole number > 0"),
    "clips 0": (lambda c: c["data"].__setitem__("clips", 0), "its data.clips is 0, not a whole number > 0"),
    "data a list": (lambda c: c.__setitem__("data", [1]), 'its "data" is not an object'),
    "no state": (lambda c: c.pop("state_dict"), 'it has no "state_dict"'),
    "vocab of numbers": (lambda c: c.__setitem__("vocab", [1, 2]), 'its "vocab" is not a list of words'),
    "pca not tensors": (lambda c: c["data"].__setitem__("pca", {"mean": 1}),
                        "its data.pca is not {mean (D_in), components (feature_dim, D_in)} tensors for "
                        "feature_dim 128"),
    "only format and version": (lambda c: [c.pop(k) for k in list(c) if k not in ("format", "version")],
                                'it has no "model_config"'),
}


@pytest.mark.parametrize("kind", list(DAMAGED_FIELDS))
def test_a_checkpoint_with_damaged_fields_is_one_error_naming_it(trained, tmp_path, kind):
    root, best, video = trained
    edit, problem = DAMAGED_FIELDS[kind]
    path = edited(best, tmp_path / "damaged.pt", edit)
    want = (f"checkpoint {path} was not written by fsan train, or is damaged: {problem}. Pass a best.pt or "
            "last.pt from `fsan train`, or train again.")
    with pytest.raises(FsanError) as info:
        checkpoint.load(path)
    assert str(info.value) == want
    for args in (["ground", video, "a person opens the door", "--checkpoint", path],
                 ["evaluate", "--data-dir", root, "--checkpoint", path]):
        r = cli(*args)
        assert (r.exit_code, last_line(r)) == (1, f"Error: {want}"), r.stderr


# ----------------------------------------------------------------------------- D17: what --checkpoint is


@pytest.mark.parametrize("kind", ["loop", "dangling", "fifo", "folder", "missing"])
def test_a_checkpoint_path_that_is_no_file_is_said_as_what_it_is(trained, tmp_path, kind):
    root, _, video = trained
    path = tmp_path / f"{kind}.pt"
    if kind == "loop":
        os.symlink(path.name, path)
        want = (f"checkpoint {path} is a link loop (following its links never reaches a file). Pass the .pt "
                "file itself, e.g. runs/x/best.pt.")
    elif kind == "dangling":
        os.symlink("gone.pt", path)
        want = (f"checkpoint {path} is a broken link (to gone.pt, which does not exist). Pass the .pt file "
                "itself, e.g. runs/x/best.pt.")
    elif kind == "fifo":
        os.mkfifo(path)
        want = (f"checkpoint {path} is not a regular file (a FIFO, socket or device). Pass a .pt file from "
                "`fsan train`, e.g. runs/x/best.pt.")
    elif kind == "folder":
        path.mkdir()
        want = f"checkpoint {path} is a folder. Pass the .pt file inside it, e.g. best.pt."
    else:
        want = f"checkpoint {path} does not exist. Check the path (e.g. runs/x/best.pt)."
    for args in (["ground", video, "a person opens the door", "--checkpoint", path],
                 ["evaluate", "--data-dir", root, "--checkpoint", path]):
        r = cli(*args)
        assert (r.exit_code, r.stdout, last_line(r)) == (1, "", f"Error: {want}"), r.stderr


def test_a_full_disk_writing_the_synthetic_store_names_an_option_the_command_has(tmp_path, monkeypatch):
    def full(path, array, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    r = cli("evaluate", "--data-dir", tmp_path, "--baseline", "random", "--metric", "miou")  # no --out
    assert r.exit_code == 1
    assert last_line(r).startswith(f"Error: cannot write the store at {tmp_path}/synthetic")
    assert last_line(r).endswith(": no space is left on the disk. Free some space on it, or choose another "
                                 "--data-dir.")


# ----------------------------------------------------------------------------- D9: custom JSONL

LINE = {"video": "a", "duration": 30, "query": "a man opens the door", "times": [1, 5]}
BAD_LINES = {
    "split videos": ({"split": "videos"}, 'split is "videos", not one of train, val, test. Use one of train, '
                                          "val, test, or leave the field out (train)."),
    "split manifest": ({"split": "manifest"}, 'split is "manifest", not one of train, val, test. Use one of '
                                              "train, val, test, or leave the field out (train)."),
    "split null": ({"split": None}, "split is null, not one of train, val, test. Use one of train, val, test, "
                                    "or leave the field out (train)."),
    "split bogus": ({"split": "bogus"}, 'split is "bogus", not one of train, val, test. Use one of train, val, '
                                        "test, or leave the field out (train)."),
    "query null": ({"query": None}, "query is null, not a sentence. Give the query as a string."),
    "query a number": ({"query": 5}, "query is 5, not a sentence. Give the query as a string."),
    "video null": ({"video": None}, "video is null, not an id. Give the video's id as a string."),
    "video a list": ({"video": ["a"]}, 'video is ["a"], not an id. Give the video\'s id as a string.'),
}


@pytest.mark.parametrize("kind", list(BAD_LINES))
def test_custom_lines_with_null_or_reserved_values_are_an_error_naming_the_line(tmp_path, kind):
    change, problem = BAD_LINES[kind]
    ann, feats = write_custom(tmp_path, [LINE, {**LINE, "video": "b"}, {**LINE, **change}])
    out = tmp_path / "store"
    r = cli("prepare", "--dataset", "custom", "--annotations", ann, "--features", feats, "--out", out)
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", f"Error: {ann}:3: {problem}\n")
    assert not out.exists()


def test_custom_splits_train_val_test_and_the_default_are_kept(tmp_path):
    lines = [{**LINE, "split": "train"}, {**LINE, "video": "b"}, {**LINE, "video": "c", "split": "val"},
             {**LINE, "video": "c", "split": "test", "query": "a woman"}]
    ann, feats = write_custom(tmp_path, lines)
    out = tmp_path / "store"
    r = cli("prepare", "--dataset", "custom", "--annotations", ann, "--features", feats, "--out", out, "--json")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["test.jsonl", "train.jsonl", "val.jsonl", "videos.jsonl"]
    assert len((out / "videos.jsonl").read_text().splitlines()) == 3


# ----------------------------------------------------------------------------- D13: model moments


@pytest.fixture
def scored(tmp_path):
    make_store(tmp_path, "synthetic", {"train": TRAIN, "val": TEST[:2], "test": TEST})
    return tmp_path


def prior_aware(rows: list[dict]) -> list[dict]:
    return [{**r, "span_prior": {"weight": 0.05, "changed": False}, "model_moments": r["moments"]} for r in rows]


MALFORMED = {
    "strings": ([["a", "b", "c"]], 'moment 1 is ["a", "b", "c"], not [start_s, end_s] or [start_s, end_s, score]'),
    "flat": ([1, 2, 3], "moment 1 is 1, not [start_s, end_s] or [start_s, end_s, score]"),
    "inverted": ([[5, 1, 0.3]], "moment 1 is [5, 1, 0.3]: it needs 0 <= start <= end"),
    "past the end": ([[0, 99, 0.3]], "moment 1 is [0, 99, 0.3]: it ends after the duration 10"),
}


@pytest.mark.parametrize("old", [False, True], ids=["model_moments", "span_prior.moments"])
@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_model_moments_are_one_error_naming_the_row(scored, kind, old):
    moments, problem = MALFORMED[kind]
    rows = prior_aware(PREDICTIONS)
    rows[1]["model_moments"] = moments
    if old:  # a file written before the model's own answers were named "model_moments"
        rows = [{**{k: v for k, v in r.items() if k != "model_moments"},
                 "span_prior": {**r["span_prior"], "moments": r["model_moments"]}} for r in rows]
    key = "span_prior.moments" if old else "model_moments"
    text = "".join(json.dumps(r) + "\n" for r in rows)
    for extra in ([], ["--no-span-prior"]):
        r = run_evaluate(["--predictions", "-", "--metric", "miou", *extra], scored, input=text)
        assert (r.exit_code, r.stdout, last_line(r)) == (
            1, "", f'Error: prediction row 2 has a malformed "{key}": {problem}. Fix the row, or drop its '
                   '"span_prior" and "model_moments" fields.')


def test_a_span_prior_field_that_is_no_object_is_malformed(scored):
    rows = prior_aware(PREDICTIONS)
    rows[2]["span_prior"] = 5
    r = run_evaluate(["--predictions", "-", "--metric", "miou"], scored,
                     input="".join(json.dumps(x) + "\n" for x in rows))
    assert r.exit_code == 1
    assert last_line(r).startswith('Error: prediction row 3 has a malformed "span_prior" (it needs "weight"')


def test_well_formed_model_moments_score_as_the_moments(scored):
    text = "".join(json.dumps(r) + "\n" for r in prior_aware(PREDICTIONS))
    r = run_evaluate(["--predictions", "-", "--metric", "miou", "--no-span-prior"], scored, input=text)
    assert (r.exit_code, r.stdout) == (0, "45.00\n"), r.stderr


# ----------------------------------------------------------------------------- D18: --plot


def test_ground_plot_refuses_an_existing_file_without_overwrite_and_writes_atomically(trained, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    _, best, video = trained
    plot = tmp_path / "existing.png"
    plot.write_text("keep\n")
    args = ["ground", video, "a person opens the door", "--checkpoint", best, "--plot", plot]
    r = cli(*args)
    assert (r.exit_code, r.stdout, r.stderr) == (
        1, "", f"Error: --plot {plot} already exists. Pass --overwrite to replace it, or choose another file.\n")
    assert plot.read_text() == "keep\n"
    import matplotlib.figure

    real = matplotlib.figure.Figure.savefig

    def half(self, fh, *a, **kw):
        fh.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half)
    r = cli(*args, "--overwrite")
    assert (r.exit_code, last_line(r)) == (
        1, f"Error: cannot write {plot}: no space is left on the disk. Free some space on it, or pass another "
           "--plot FILE.")
    assert plot.read_text() == "keep\n" and [p.name for p in tmp_path.iterdir()] == ["existing.png"]
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", real)
    r = cli(*args, "--overwrite")
    assert r.exit_code == 0, r.stderr
    assert plot.read_bytes().startswith(b"\x89PNG\r\n")


def test_evaluate_plot_refuses_an_existing_file_without_overwrite(scored, tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "lengths.png"
    plot.write_text("keep\n")
    r = run_evaluate(["--baseline", "prior", "--plot", str(plot)], scored)
    assert (r.exit_code, r.stdout, r.stderr) == (
        1, "", f"Error: --plot {plot} already exists. Pass --overwrite to replace it, or choose another file.\n")
    assert plot.read_text() == "keep\n"
    r = run_evaluate(["--baseline", "prior", "--plot", str(plot), "--overwrite"], scored)
    assert r.exit_code == 0, r.stderr
    assert plot.read_bytes().startswith(b"\x89PNG\r\n")
