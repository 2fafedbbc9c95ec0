"""`fsan ablate`: every variant trains, the ablated parts are really off, resume skips finished
runs, and the CLI's exit codes, --json, --csv and --seeds (tiny model, tiny synthetic store)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fsan_cli.ablate import ablation
from fsan_cli.ablate import report as ablation_report
from fsan_cli.app import app
from fsan_cli.core.errors import FsanError
from fsan_cli.core.settings import load_settings, parse_value
from fsan_cli.core.text import encode_texts
from fsan_cli.data.store import video_rows
from fsan_cli.evaluate.metrics import metric_keys
from fsan_cli.train import loop as training
from fsan_cli.train.step import training_step
from models.fsan import FSAN
from tests.helpers import TINY_MODEL

TINY = [*TINY_MODEL, "train.epochs=1"]
TINY_ARGS = [a for s in TINY for a in ("--set", s)]
KEYS = metric_keys("synthetic")
TABLE4 = ["no_grounding", "no_sap_loss", "no_cross_attention", "no_inner_attention", "full"]


def fsan_ablate(data_dir: Path, out: Path, *args: str):
    argv = ["--device", "cpu", "ablate", "--data-dir", str(data_dir), "--out", str(out), *TINY_ARGS]
    return CliRunner().invoke(app, [*argv, *args])


# ----------------------------------------------------------------------------- the variants


def build(store, name: str, extra: tuple[str, ...] = ()) -> FSAN:
    cfg = load_settings("synthetic", None, [*TINY, *ablation.BY_NAME[name].overrides, *extra])
    mc = cfg.model_config(int(store.vectors.shape[1]), store.feature_dim)
    torch.manual_seed(0)
    return FSAN(mc, torch.from_numpy(store.vectors))


def step(model: FSAN, store):
    """One training step (positive and negative pass, losses, backward)."""
    queries = store.split("train")
    word_to_id = {w: i for i, w in enumerate(store.vocab)}
    tokens = torch.from_numpy(encode_texts([q.query for q in queries], word_to_id, model.cfg.max_tokens))
    video = torch.from_numpy(video_rows(store, queries))
    features = torch.from_numpy(store.features).float()
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(tokens.shape[0], generator=g)[:16]
    neg = torch.randint(0, tokens.shape[0], (16,), generator=g)
    model.train()
    losses = training_step(model, features, tokens, video, idx, neg, torch.device("cpu"))
    model.zero_grad(set_to_none=True)
    losses.total.backward()
    return losses


@pytest.mark.parametrize("name", [v.name for v in ablation.VARIANTS])
def test_every_variant_builds_and_trains_a_step(store, name):
    model = build(store, name)
    for override in ablation.BY_NAME[name].overrides:  # the setting really reaches the model
        key, value = override.split("=", 1)
        cfg = load_settings("synthetic", None, [*TINY, override])
        assert cfg.to_dict()[key.split(".")[0]][key.split(".")[1]] == parse_value(value)
    losses = step(model, store)
    assert torch.isfinite(losses.total)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert [n for n, p in trainable if p.grad is None] == []  # no dead parameters


def param_names(model: FSAN) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def grads_nonzero(model: FSAN, part: str) -> bool:
    ps = [p for n, p in model.named_parameters() if part in n]
    return bool(ps) and all(p.grad is not None and p.grad.abs().sum() > 0 for p in ps)


def test_without_cross_attention_has_no_cross_parameters(store):
    full, ablated = build(store, "full"), build(store, "no_cross_attention")
    step(full, store)
    step(ablated, store)
    assert grads_nonzero(full, "_cross.")
    assert [n for n in param_names(ablated) if "cross" in n] == []
    assert grads_nonzero(ablated, "icim.0.s_self.")


def test_without_inner_attention_has_no_icim_self_attention(store):
    full, ablated = build(store, "full"), build(store, "no_inner_attention")
    step(full, store)
    step(ablated, store)
    assert grads_nonzero(full, "icim.0.v_self.")
    assert [n for n in param_names(ablated) if n.startswith("icim.") and "_self" in n] == []
    assert grads_nonzero(ablated, "icim.0.v_cross.")


def test_mlp_grounding_head_only_without_grounding_module(store):
    for v in ablation.VARIANTS:
        model = build(store, v.name)
        has_head = any(n.startswith("mlp_grounding.") for n in param_names(model))
        assert has_head == (v.name == "no_grounding"), v.name
    model = build(store, "no_grounding")
    step(model, store)
    assert grads_nonzero(model, "mlp_grounding.")


def test_without_sap_losses_only_the_matching_loss_trains(store):
    losses = step(build(store, "no_sap_loss"), store)
    assert losses.inner.item() == 0 and losses.outer.item() == 0
    assert losses.total.item() == losses.matching.item()
    full = step(build(store, "full"), store)
    assert full.inner.item() != 0 and full.outer.item() != 0


# ----------------------------------------------------------------------------- library


def test_select_variants_groups_and_full_always_in():
    assert [v.name for v in ablation.select_variants("table4")] == [
        "full", "no_grounding", "no_sap_loss", "no_cross_attention", "no_inner_attention"]
    design = [v.name for v in ablation.select_variants("design")]
    assert design[0] == "full" and {"weights_raw", "sc_p", "sc_p_hat", "outer_literal",
                                    "inner_sigmoid_sum"} <= set(design)
    assert len(ablation.select_variants("all")) == len(ablation.VARIANTS)
    assert [v.name for v in ablation.select_variants("sc_p_hat, full")] == ["full", "sc_p_hat"]
    with pytest.raises(FsanError, match="unknown variant 'nope'"):
        ablation.select_variants("table4,nope")


def test_help_names_every_variant():
    from fsan_cli.commands.ablate import ablate

    text = " ".join(ablate.__doc__.split())
    for group in ("table4", "design"):
        assert f"{group} = {', '.join(ablation.GROUPS[group])}" in text


def test_plan_trains_identical_settings_once(tmp_path):
    variants = ablation.select_variants("sc_p,sc_p_hat")
    jobs = ablation.plan("synthetic", None, [*TINY, 'align.sc_map="p"'], variants, 2, tmp_path)
    by = {(j.variant.name, j.seed): j for j in jobs}
    assert by[("sc_p", 1)].same_as is by[("full", 1)]
    assert by[("sc_p_hat", 0)].same_as is None
    assert by[("full", 1)].folder == tmp_path / "full-seed1"
    assert by[("full", 1)].cfg.train.seed == 1


def fake_rows(full: float, no_sap: float) -> list[dict]:
    return [{"variant": "full", "label": "full model", "source": "this run", "miou": full},
            {"variant": "no_sap_loss", "label": "w/o loss on SAP", "source": "this run",
             "miou": no_sap}]


def test_direction_notes_compare_with_the_paper():
    (note,) = ablation_report.direction_notes(fake_rows(30.0, 25.0))
    assert note.endswith("mIoU -5.00 vs the full model (paper -5.95): the paper's direction.")
    (note,) = ablation_report.direction_notes(fake_rows(30.0, 31.0))
    assert note.endswith("(paper -5.95): opposite to the paper.")


def test_paper_rows_only_beside_activitynet():
    assert ablation_report.paper_rows("synthetic") == []
    rows = ablation_report.paper_rows("activitynet")
    assert [r["variant"] for r in rows] == TABLE4
    assert rows[-1]["miou"] == 36.10 and rows[-1]["source"] == "paper"
    console_text = io.StringIO()
    from rich.console import Console

    Console(file=console_text, width=120).print(ablation_report.render_table("activitynet", rows, ""))
    assert "w/o cross-modal attention (paper)" in console_text.getvalue()


# ----------------------------------------------------------------------------- the CLI


def test_unknown_variant_lists_the_valid_ones(data_dir, tmp_path):
    result = fsan_ablate(data_dir, tmp_path / "out", "--variants", "table4,bogus")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: unknown variant 'bogus'. Use a comma list of: "
                                    "table4, design, all (groups) or full, no_grounding,")
    assert not (tmp_path / "out").exists()


def test_usage_errors(data_dir, tmp_path):
    result = fsan_ablate(data_dir, tmp_path / "o", "--json", "--csv")
    assert result.exit_code == 2  # options that cannot go together: bad usage, as typer's own
    assert result.stderr.endswith("\n\nError: --json and --csv both choose what stdout carries. Pass only one.\n")
    assert fsan_ablate(data_dir, tmp_path / "o", "--seeds", "0").exit_code == 2
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = fsan_ablate(data_dir, foreign)
    assert result.exit_code == 1
    assert result.stderr.endswith(f"Error: {foreign} exists and was not written by `fsan ablate`. "
                                  "Choose another --out.\n")


def test_table4_json_then_resume_with_csv(data_dir, tmp_path):
    out = tmp_path / "abl"
    first = fsan_ablate(data_dir, out, "--json")
    assert first.exit_code == 0, first.stderr
    rows = json.loads(first.stdout)["rows"]
    assert [r["variant"] for r in rows] == [*TABLE4, "random", "prior"]
    assert [r["source"] for r in rows] == ["this run"] * 5 + ["baseline"] * 2
    for r in rows:
        assert all(0 <= r[k] <= 100 for k in KEYS)
    ours = rows[0]
    assert ours["seeds"] == [0] and ours["runs"] == [str(out / "no_grounding")]
    assert ours["miou_std"] is None and ours["same_as"] is None and ours["error"] is None
    for name in TABLE4:
        result = json.loads((out / name / "results.json").read_text())
        assert result["metrics"]["miou"] == next(r["miou"] for r in rows if r["variant"] == name)
        assert (out / name / "best.pt").is_file()

    # an unfinished folder resumes (here: at its end), one with other settings restarts;
    # finished ones are skipped and left untouched
    (out / "no_sap_loss" / "results.json").unlink()
    (out / "no_cross_attention" / "results.json").unlink()
    (out / "no_cross_attention" / "config.toml").write_text("[model]\nhidden = 99\n")
    redo = ("no_sap_loss", "no_cross_attention")
    kept = {n: (out / n / "results.json").stat().st_mtime_ns for n in TABLE4 if n not in redo}
    second = fsan_ablate(data_dir, out, "--csv")
    assert second.exit_code == 0, second.stderr
    for name in kept:
        assert f"skip {name} (seed 0): finished in {out / name}" in second.stderr
        assert (out / name / "results.json").stat().st_mtime_ns == kept[name]
    assert "is unfinished; resuming no_sap_loss (seed 0) from its last checkpoint" in second.stderr
    assert "is unfinished; training no_cross_attention (seed 0) from scratch" in second.stderr
    for name in redo:
        assert (out / name / "results.json").is_file()
    table = list(csv.reader(io.StringIO(second.stdout)))
    assert table[0] == ["variant", "label", "source", "seeds", "runs", *KEYS,
                        *(f"{k}_std" for k in KEYS), "same_as", "error"]
    assert [r[0] for r in table[1:]] == [*TABLE4, "random", "prior"]
    miou = table[0].index("miou")
    assert float(table[5][miou]) == rows[4]["miou"]  # full, skipped: the same numbers
    assert float(table[2][miou]) == rows[1]["miou"]  # resumed at its end: the same model

    # asking for other settings in the same folder is refused, never mixed in silently
    third = fsan_ablate(data_dir, out, "--epochs", "2")
    assert third.exit_code == 1
    assert "was trained with other settings (train.epochs: 1 there, 2 now)" in third.stderr
    assert third.stderr.rstrip().endswith("Pass --overwrite to start over, or choose another --out.")
    assert "training" not in third.stderr  # refused before anything trained

    fourth = fsan_ablate(data_dir, out)  # all finished: the table alone
    assert fourth.exit_code == 0
    assert "ablations (layout of the paper's Table 4)" in fourth.stdout
    assert "w/o loss on SAP: only L^t trains" in fourth.stdout
    # each row's note tells the way its own numbers go (one epoch of 30 videos: the full model has
    # not learned to ground, so the way is noise here; tests/test_training.py asserts the paper's
    # direction where it is reliable)
    said = " ".join(fourth.stdout.split())
    by = {r["variant"]: r["miou"] for r in rows}
    for name in TABLE4[:-1]:
        delta = by[name] - by["full"]
        paper = ablation.PAPER_METRICS[name]["miou"] - ablation.PAPER_METRICS["full"]["miou"]
        way = ("no change" if delta == 0 else  # no_sap_loss: 2 steps, the SAP weight still 0
               "the paper's direction" if (delta < 0) == (paper < 0) else "opposite to the paper")
        assert f"mIoU {delta:+.2f} vs the full model (paper {paper:+.2f}): {way}." in said, name
    assert "training" not in fourth.stderr


def test_seeds_mean_and_std_and_identical_variants_train_once(data_dir, tmp_path):
    out = tmp_path / "seeds"
    result = fsan_ablate(data_dir, out, "--variants", "full,sc_p", "--set", 'align.sc_map="p"',
                         "--seeds", "2", "--json")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ablation.json", "full-seed0", "full-seed1"]
    rows = {r["variant"]: r for r in json.loads(result.stdout)["rows"]}
    full, same = rows["full"], rows["sc_p"]
    assert full["seeds"] == [0, 1] and same["same_as"] == "full"
    values = [json.loads((out / f"full-seed{s}" / "results.json").read_text())["metrics"]["miou"]
              for s in (0, 1)]
    mean = sum(values) / 2
    assert full["miou"] == pytest.approx(mean, abs=1e-4) and same["miou"] == full["miou"]
    assert full["miou_std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2), abs=1e-4)
    table = fsan_ablate(data_dir, out, "--variants", "full,sc_p", "--set", 'align.sc_map="p"',
                        "--seeds", "2")
    assert table.exit_code == 0 and "±" in table.stdout
    assert "Mean and sample std (±) over seeds 0, 1." in table.stdout


def test_interrupted_run_resumes_and_failures_are_reported(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "int"
    real = training.train
    calls = []

    def interrupt_second(cfg, store, out_dir, device, **kw):
        calls.append(out_dir.name)
        if len(calls) == 2:
            raise training.TrainingInterrupted(out_dir, 1, None)
        return real(cfg, store, out_dir, device, **kw)

    monkeypatch.setattr(training, "train", interrupt_second)
    result = fsan_ablate(data_dir, out, "--variants", "full,no_sap_loss")
    assert result.exit_code == 130
    assert result.stderr.endswith(f"Error: interrupted. Finished variants are kept in {out}; "
                                  "run the same command again to resume.\n")
    assert (out / "full" / "results.json").is_file()
    assert not (out / "no_sap_loss" / "results.json").exists()

    def fail(cfg, store, out_dir, device, **kw):
        raise FsanError("the loss became nan at step 1", "Lower train.lr")

    monkeypatch.setattr(training, "train", fail)
    result = fsan_ablate(data_dir, out, "--variants", "full,no_sap_loss", "--json")
    assert result.exit_code == 1
    assert "skip full (seed 0)" in result.stderr
    failed = {r["variant"]: r for r in json.loads(result.stdout)["rows"]}["no_sap_loss"]
    assert failed["error"] == "the loss became nan at step 1. Lower train.lr."
    assert failed["miou"] is None
    assert result.stderr.endswith("Error: 1 runs failed: no_sap_loss (seed 0). See the warnings "
                                  "above; fix the settings and run again (finished ones are skipped).\n")


def test_an_unfinished_run_that_split_its_batches_still_resumes(tmp_path):
    """A CPU run may record the train.micro_batch it chose (fsan_cli/core/memory.py); the job is the
    same, so `fsan ablate` resumes it. Any other difference trains from scratch."""
    cfg = load_settings("synthetic")
    job = ablation.Job(ablation.VARIANTS[0], 0, tmp_path, cfg)
    saved = cfg.replace("train.micro_batch", 5)
    (tmp_path / "config.toml").write_text(saved.to_toml())
    assert ablation.same_settings(job)
    saved = saved.replace("train.lr", cfg.train.lr * 2)
    (tmp_path / "config.toml").write_text(saved.to_toml())
    assert not ablation.same_settings(job)
