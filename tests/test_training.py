"""End to end on a small synthetic set: the loss falls, and the trained model grounds: its
answers vary with the query, and it beats both random and the best fixed-segment prior."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
import torch

from fsan_cli.ablate import ablation
from fsan_cli.ablate import report as ablation_report
from fsan_cli.core.settings import load_settings
from fsan_cli.data.store import load_store
from fsan_cli.data.synthetic import ensure_synthetic
from fsan_cli.evaluate.baselines import prior_predictions, random_predictions
from fsan_cli.evaluate.scoring import score
from fsan_cli.predict.predictor import Predictor
from fsan_cli.train.loop import train

SIZES = {"train": 700, "val": 100, "test": 150}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    store = load_store(ensure_synthetic(root / "data", sizes=SIZES))
    cfg = load_settings("synthetic")  # the shipped defaults, unchanged
    train(cfg, store, root / "run", torch.device("cpu"), progress=False)
    return store, root / "run"


@pytest.mark.slow
def test_loss_falls(trained):
    _, run = trained
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["loss_matching"] < 0.6 * log[0]["loss_matching"]


@pytest.mark.slow
def test_trained_model_grounds_beyond_random_and_prior(trained):
    store, run = trained
    queries = store.split("test")
    preds = Predictor.load(run / "best.pt", torch.device("cpu")).rows(store, queries, 5)
    model = score("synthetic", queries, preds)[0]
    rand = score("synthetic", queries, random_predictions(queries, top_k=5, seed=0))[0]
    prior = score("synthetic", queries, prior_predictions(store.split("train"), queries, top_k=5))[0]
    for key in ("r@1,iou=0.5", "r@1,iou=0.3", "miou"):
        assert model[key] > rand[key] + 5, (key, model, rand)
        assert model[key] > prior[key] + 3, (key, model, prior)


@pytest.mark.slow
def test_answers_vary_with_the_query(trained):
    store, run = trained
    queries = store.split("test")
    preds = Predictor.load(run / "best.pt", torch.device("cpu")).rows(store, queries, 1)
    by_video = defaultdict(set)
    for p in preds:
        by_video[p["video"]].add(tuple(p["moments"][0][:2]))
    multi = [v for v in by_video if sum(q.video == v for q in queries) > 1]
    varied = sum(len(by_video[v]) > 1 for v in multi)
    assert varied > 0.6 * len(multi)
    whole = sum(abs(p["moments"][0][0]) < 1e-6 and abs(p["moments"][0][1] - p["duration"]) < 1e-3 for p in preds)
    assert whole < 0.5 * len(preds)


@pytest.fixture(scope="module")
def without_grounding(trained, tmp_path_factory):
    """Table 4's "w/o grounding module" trained like `trained`: the shipped defaults, the same store."""
    store, _ = trained
    cfg = load_settings("synthetic", overrides=list(ablation.BY_NAME["no_grounding"].overrides))
    out = tmp_path_factory.mktemp("no_grounding") / "run"
    train(cfg, store, out, torch.device("cpu"), progress=False)
    return out


@pytest.mark.slow
def test_without_the_grounding_module_it_grounds_worse_as_in_the_paper(trained, without_grounding):
    """An ablation in the paper's direction, on a setting where the direction is reliable. Table 4's
    largest gap here: the grounding module (eq. 8 on the alignment map) against an MLP scoring
    segments (paper: mIoU 36.10 -> 34.57; README, the synthetic benchmark: 67.8 -> 29.5). Here the
    full model beats the prior (the test above), while the MLP head stayed at 24-27 mIoU in the five
    settings tried (30 to 700 train videos, a few to 460 steps). tests/test_ablate.py's one-epoch
    ablation cannot show a direction: its full model has not learned to ground yet (below random),
    so its rows are untrained noise."""
    store, run = trained
    queries = store.split("test")
    miou = {}
    for name, folder in (("full", run), ("no_grounding", without_grounding)):
        # as `fsan ablate` scores them: each network's own answers, no span prior
        rows = Predictor.load(folder / "best.pt", torch.device("cpu"), span_prior=False).rows(store, queries, 5)
        miou[name] = score("synthetic", queries, rows)[0]["miou"]
    assert miou["full"] > miou["no_grounding"] + 10, miou
    rows = [{"variant": n, "label": ablation.BY_NAME[n].label, "source": "this run", "miou": m}
            for n, m in miou.items()]
    (note,) = ablation_report.direction_notes(rows)
    assert note.endswith(": the paper's direction."), note
