"""Model sizes (--size small|base|paper), a run's length in steps, and `fsan train --seeds`."""

from __future__ import annotations

import json
import statistics
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from fsan_cli.app import app
from fsan_cli.core.errors import FsanError
from fsan_cli.core.settings import default_size, load_settings
from fsan_cli.train.step import run_length
from tests.helpers import TINY_MODEL, set_args

TINY = set_args(TINY_MODEL)


def test_each_size_sets_its_model_and_recipe():
    small, base, paper = (load_settings("activitynet", size=s) for s in ("small", "base", "paper"))
    assert (small.model.hidden, small.model.layers, small.train.batch_size, small.train.lr) == (32, 1, 64, 5e-4)
    assert (base.model.hidden, base.model.layers) == (128, 2)
    assert (paper.model.hidden, paper.model.layers, paper.model.heads) == (512, 6, 8)  # §4.2
    assert (paper.train.batch_size, paper.train.lr) == (128, 1e-4)
    for cfg, name in ((small, "small"), (base, "base"), (paper, "paper")):
        assert cfg.train.size == name and cfg.train.epochs == 0 and cfg.train.steps > 0
        assert cfg.align.sc_map == "centered"  # the shipped defaults hold at every size
    # the dataset's preset goes over the size, --set over both
    assert load_settings("synthetic", size="paper").train.epochs == 12
    assert load_settings("activitynet", overrides=["model.hidden=64"], size="small").model.hidden == 64
    assert load_settings("activitynet", size="paper").data.clips == 64


def test_default_size_follows_the_device():
    assert default_size("activitynet", "cpu") == "small"
    assert default_size("activitynet", "cuda:0") == "paper"
    assert default_size("synthetic", "cuda") == "small"  # the embedded benchmark is CPU-sized
    assert default_size("activitynet") == "paper"  # settings read without a device: the paper's


def test_unknown_size_and_no_length_are_refused():
    with pytest.raises(FsanError, match="unknown size 'huge'"):
        load_settings("activitynet", size="huge")
    with pytest.raises(FsanError, match="train.steps is 0 too"):
        load_settings("activitynet", overrides=["train.epochs=0", "train.steps=0"])


@pytest.mark.parametrize("epochs, steps, queries, batch, want", [
    (0, 2000, 5544, 64, (87, 23)),   # 1,500 semi-real ActivityNet videos: 23 epochs, 2,001 steps
    (0, 2000, 37421, 64, (585, 4)),  # all of ActivityNet: the same number of updates
    (0, 10, 5544, 64, (87, 2)),      # at least two epochs for val to choose from
    (7, 2000, 5544, 64, (87, 7)),    # epochs given: they win
    (0, 2000, 40, 64, (1, 100)),     # a handful of videos: at most 100 epochs
])  # fmt: skip
def test_run_length(epochs, steps, queries, batch, want):
    tc = SimpleNamespace(epochs=epochs, steps=steps, batch_size=batch)
    assert run_length(tc, queries) == want


def train(*args: str, device: str = "cpu"):
    return CliRunner().invoke(app, ["--device", device, "train", *args], env={"COLUMNS": "200", "NO_COLOR": "1"})


def test_steps_decide_the_epochs_of_a_run(data_dir, tmp_path):
    out = tmp_path / "run"
    r = train("--data-dir", str(data_dir), "--out", str(out), "--no-test", *TINY,
              "--set=train.epochs=0", "--set=train.steps=5", "--set=train.batch_size=32")
    assert r.exit_code == 0, r.stderr
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    queries = sum(1 for _ in (data_dir / "synthetic" / "train.jsonl").open())
    per_epoch = -(-queries // 32)
    assert [x["epoch"] for x in records] == list(range(1, max(2, -(-5 // per_epoch)) + 1))
    assert f"({per_epoch * len(records)} steps: train.steps=5, size small)" in r.stderr


def test_a_cpu_run_without_size_says_it_trains_small(tmp_path):
    r = train("--dataset", "activitynet", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert r.exit_code == 1  # no prepared store here; the size is said before that
    assert "No --size given: training the small model on the CPU" in r.stderr
    r = train("--dataset", "activitynet", "--size", "paper", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert "No --size given" not in r.stderr
    r = train("--size", "huge", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines()[-1] == "Error: unknown size 'huge' (--size huge). Use one of: small, base, paper."


def test_seeds_report_every_run_and_their_spread(data_dir, tmp_path):
    out = tmp_path / "seeds"
    r = train("--data-dir", str(data_dir), "--out", str(out), "--epochs", "1", "--seeds", "3,5", "--json", *TINY)
    assert r.exit_code == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["seeds"] == [3, 5] and [x["run"] for x in got["runs"]] == [str(out / "seed3"), str(out / "seed5")]
    for key, mean in got["mean"].items():
        values = [x[key] for x in got["runs"]]
        assert mean == pytest.approx(statistics.fmean(values), abs=1e-3)
        assert got["sd"][key] == pytest.approx(statistics.stdev(values), abs=1e-3)
    for seed in (3, 5):
        assert f"seed = {seed}" in (out / f"seed{seed}" / "config.toml").read_text()
    table = train("--data-dir", str(data_dir), "--out", str(tmp_path / "t"), "--epochs", "1", "--seeds", "0,1", *TINY)
    assert table.exit_code == 0, table.stderr
    for label in ("FSAN seed 0", "FSAN seed 1", "FSAN mean of 2 seeds", "FSAN sd (sample)",
                  "Prior (best fixed segment on train)"):
        assert label in table.stdout


@pytest.mark.parametrize("seeds, message", [
    ("0,0", "Error: --seeds '0,0' names a seed twice. List each seed once."),
    ("a,1", "Error: --seeds 'a,1' is not a comma-separated list of whole numbers. Write e.g. --seeds 0,1,2."),
    (",", "Error: --seeds names no seed. Write e.g. --seeds 0,1,2."),
])  # fmt: skip
def test_bad_seeds_are_refused(data_dir, tmp_path, seeds, message):
    r = train("--data-dir", str(data_dir), "--out", str(tmp_path / "x"), "--seeds", seeds)
    assert r.exit_code == 1 and r.stderr.strip() == message


def test_train_size_of_set_or_config_selects_the_size(tmp_path):
    assert load_settings("activitynet", overrides=["train.size=paper"], device="cpu").model.hidden == 512
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\nsize = "base"\n')
    assert load_settings("activitynet", cfg).model.hidden == 128
    with pytest.raises(FsanError, match="ask for different sizes"):
        load_settings("activitynet", cfg, ["train.size=small"])


def test_seeds_run_again_continue_and_one_seed_has_no_spread(data_dir, tmp_path):
    out = tmp_path / "seeds"
    first = train("--data-dir", str(data_dir), "--out", str(out), "--epochs", "1", "--seeds", "0", "--json", *TINY)
    assert first.exit_code == 0, first.stderr
    again = train("--data-dir", str(data_dir), "--out", str(out), "--epochs", "1", "--seeds", "0,1", "--json", *TINY)
    assert again.exit_code == 0, again.stderr
    assert f"Continuing seed 0 in {out / 'seed0'}" in again.stderr
    one, both = json.loads(first.stdout), json.loads(again.stdout)
    assert both["runs"][0]["miou"] == one["runs"][0]["miou"] and len(both["runs"]) == 2
    other = train("--data-dir", str(data_dir), "--out", str(out), "--epochs", "2", "--seeds", "0", *TINY)
    assert other.exit_code == 1
    assert other.stderr.strip().endswith(f"Error: run folder {out / 'seed0'} holds a run of other settings. "
                                         "Pass --overwrite to replace it, or choose another --out.")
    table = train("--data-dir", str(data_dir), "--out", str(out), "--epochs", "1", "--seeds", "1", *TINY)
    assert table.exit_code == 0, table.stderr
    assert "FSAN seed 1" in table.stdout and "sd (sample)" not in table.stdout and "mean of" not in table.stdout


def test_ctrl_c_while_scoring_says_the_run_is_complete(data_dir, tmp_path, monkeypatch):
    from fsan_cli.evaluate import evaluation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "evaluate_split", interrupted)
    out = tmp_path / "run"
    r = train("--data-dir", str(data_dir), "--out", str(out), "--epochs", "1", *TINY)
    assert r.exit_code == 130
    assert r.stderr.strip().splitlines()[-1] == (
        f"Error: interrupted while scoring the test split; the run in {out} is complete. "
        f"Score it with: fsan evaluate --checkpoint {out / 'best.pt'}")
    assert "span_prior" in __import__("fsan_cli.core.checkpoint").core.checkpoint.load(out / "best.pt")

