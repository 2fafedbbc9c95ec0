"""The prior-aware answer (fsan_cli/predict/span_prior.py): the prior learned on train against a plain
loop, the weight chosen on val against a plain loop, the Predictor ranking SC + w log p, the
checkpoint holding both, and `fsan evaluate` showing the model with and without it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fsan_cli.core import checkpoint
from fsan_cli.core.settings import load_settings
from fsan_cli.data.store import Query, load_store, video_rows
from fsan_cli.evaluate.metrics import iou
from fsan_cli.predict import span_prior
from fsan_cli.predict.predictor import Predictor
from fsan_cli.train import loop as training
from fsan_cli.train import span_prior_fit
from tests.helpers import TINY_MODEL, run_evaluate, tiny_synthetic, train_tiny

TINY = [*TINY_MODEL, "train.epochs=2"]


def random_queries(rng: np.random.Generator, n: int) -> list:
    out = []
    for i in range(n):
        d = float(rng.uniform(5, 200))
        moments = []
        for _ in range(int(rng.integers(1, 3))):
            a, b = sorted(rng.uniform(-0.1, 1.1, 2) * d)
            moments.append([a, max(b, a + 0.01)])
        out.append(SimpleNamespace(video=f"v{i}", duration=d, times=moments))
    return out


def test_learn_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    queries = random_queries(rng, 300)
    clips = 16
    log_prior, moments = span_prior.learn(queries, clips)
    counts = np.zeros((clips, clips))
    for q in queries:
        for a, b in q.times:
            ra, rb = min(max(a / q.duration, 0.0), 1.0), min(max(b / q.duration, 0.0), 1.0)
            s = min(int(math.floor(ra * clips)), clips - 1)
            e = min(max(int(math.ceil(rb * clips)) - 1, 0), clips - 1)
            counts[s, max(s, e)] += 1
    total = counts.sum() + clips * (clips + 1) / 2 * span_prior.SMOOTHING
    for s in range(clips):
        for e in range(clips):
            want = math.log((counts[s, e] + span_prior.SMOOTHING) / total) if s <= e else 0.0
            assert log_prior[s, e] == pytest.approx(want, abs=1e-5)
    assert moments == sum(len(q.times) for q in queries)
    assert np.exp(log_prior[np.triu_indices(clips)]).sum() == pytest.approx(1.0, abs=1e-5)


def test_a_whole_video_moment_falls_on_the_whole_video_segment():
    cells = span_prior.segment_cells(np.array([[0.0, 1.0], [0.5, 0.5], [0.26, 0.49]]), 4)
    assert cells.tolist() == [0 * 4 + 3, 2 * 4 + 2, 1 * 4 + 1]  # [0, 3]; a point; inside clip 1


def test_choose_matches_a_plain_loop():
    rng = np.random.default_rng(1)
    clips, q = 8, 60
    queries = random_queries(rng, q)
    log_prior, _ = span_prior.learn(random_queries(rng, 200), clips)
    cells = span_prior.valid_cells(clips)
    grid = rng.normal(0, 0.05, (q, len(cells))).astype(np.float32)
    durations = np.array([x.duration for x in queries])
    got = span_prior_fit.choose(grid, log_prior, durations, [x.times for x in queries], "activitynet")
    for w, value in got:
        ious = []
        for i, x in enumerate(queries):
            scores = [grid[i, j] + np.float32(w) * log_prior[c // clips, c % clips] for j, c in enumerate(cells)]
            c = cells[int(np.argmax(scores))]
            s, e = c // clips, c % clips
            pred = np.array([s, e + 1]) * x.duration / clips
            ious.append(max(float(iou(pred, np.array(t))) for t in x.times))
        ious = np.array(ious)
        want = np.mean([100 * (ious >= t).mean() for t in (0.1, 0.3, 0.5)] + [100 * ious.mean()])
        assert value == pytest.approx(want, abs=1e-6)
    assert [w for w, _ in got] == list(span_prior_fit.WEIGHTS)


def test_a_flat_map_defers_to_the_prior_and_a_sharp_one_does_not():
    clips = 8
    cells = span_prior.valid_cells(clips)
    whole = int(np.flatnonzero(cells == 0 * clips + clips - 1)[0])
    peak = int(np.flatnonzero(cells == 2 * clips + 3)[0])
    log_prior = np.full((clips, clips), -6.0, np.float32)
    log_prior[0, clips - 1] = -1.0  # the whole video: the usual span
    flat = np.random.default_rng(2).normal(0, 1e-3, len(cells)).astype(np.float32)
    sharp = flat.copy()
    sharp[peak] = 0.5
    prior = log_prior.reshape(-1)[cells]
    for grid, want in ((flat, whole), (sharp, peak)):
        assert int(np.argmax(grid + 0.05 * prior)) == want
    assert int(np.argmax(flat)) != whole  # without the prior the flat map answers noise


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("prior")
    store, best = train_tiny(root, root / "runs" / "tiny", TINY)
    return root, store, best


def test_training_stores_the_prior_and_the_weight_chosen_on_val(trained):
    _, store, best = trained
    entry = checkpoint.load(best)["span_prior"]
    prior = span_prior.SpanPrior.of(entry)
    log_prior, moments = span_prior.learn(store.split("train"), store.clips)
    np.testing.assert_allclose(prior.log_prior, log_prior)
    assert prior.moments == moments
    # the weight is the best of the candidates on val, recomputed here from val alone
    p = Predictor.load(best, torch.device("cpu"), span_prior=False)
    val = store.split("val")
    features = torch.from_numpy(np.asarray(store.features, np.float32))
    grid = p.segment_grid(features, video_rows(store, val), p.encode([q.query for q in val]))
    choices = span_prior_fit.choose(grid, log_prior, np.array([q.duration for q in val]),
                                [q.times for q in val], "synthetic")
    np.testing.assert_allclose(np.array(entry["choices"]), np.array(choices), rtol=1e-9)
    assert prior.weight == max(choices, key=lambda c: (c[1], -c[0]))[0]


def with_prior(best: Path, tmp_path: Path, weight: float) -> Path:
    """A copy of the checkpoint whose span prior has weight `weight`."""
    ckpt = checkpoint.load(best)
    clips = int(ckpt["data"]["clips"])
    log_prior = np.log(np.random.default_rng(3).dirichlet(np.ones(clips * clips))).reshape(clips, clips)
    ckpt["span_prior"] = span_prior.SpanPrior(np.triu(log_prior).astype(np.float32), weight,
                                              [(0.0, 1.0), (weight, 2.0)], 10).to_payload()
    path = tmp_path / f"w{weight}.pt"
    checkpoint.save(ckpt, path)
    return path


def test_predictor_ranks_sc_plus_the_weighted_log_prior(trained, tmp_path):
    _, store, best = trained
    path = with_prior(best, tmp_path, 0.05)
    p = Predictor.load(path, torch.device("cpu"))
    queries = store.split("test")
    features = torch.from_numpy(np.asarray(store.features, np.float32))
    video, ids = video_rows(store, queries), p.encode([q.query for q in queries])
    out = p.predict(features, video, ids, 3, plain=True)
    prior = p.span_prior.weight * p.span_prior.log_prior
    own = Predictor.load(best, torch.device("cpu"), span_prior=False)
    assert (own.encode([q.query for q in queries]) == ids).all()
    plain = own.predict(features, video, ids, 3)
    for i in range(len(queries)):  # the model's SC of every segment, one query at a time
        with torch.inference_mode():
            sc = own.model(features[video[i : i + 1]], torch.from_numpy(ids[i : i + 1]))[1][0].numpy()
        s, e = np.unravel_index(np.argmax(sc + prior), sc.shape)
        assert out.segments[i, 0].tolist() == [s, e]
        assert out.scores[i, 0] == pytest.approx(sc[s, e] + prior[s, e], abs=1e-5)
        assert out.changed[i] == (plain.segments[i, 0].tolist() != [s, e])
    np.testing.assert_array_equal(out.plain.segments, plain.segments)
    assert out.changed.any()  # this prior does move answers, so the test compares something


def test_evaluate_shows_the_model_with_and_without_the_prior(trained, tmp_path):
    root, _, best = trained
    path = with_prior(best, tmp_path, 0.05)
    table = run_evaluate(["--checkpoint", str(path)], root)
    assert table.exit_code == 0, table.stderr
    assert "FSAN + span prior (this run)" in table.stdout
    assert "FSAN without span prior" in table.stdout
    assert "Span prior: SC + 0.05 log p(s, e)" in table.stdout
    with_json = json.loads(run_evaluate(["--checkpoint", str(path), "--json"], root).stdout)
    without = json.loads(run_evaluate(["--checkpoint", str(path), "--json", "--no-span-prior"], root).stdout)
    plain = json.loads(run_evaluate(["--checkpoint", str(best), "--json", "--no-span-prior"], root).stdout)
    assert with_json["span_prior_weight"] == 0.05
    assert with_json["without_span_prior"] == {k: without[k] for k in with_json["without_span_prior"]}
    assert "without_span_prior" not in without
    assert {k: v for k, v in without.items()} == plain  # the prior is all that differs


def test_weight_zero_is_the_model_alone(trained, tmp_path):
    root, _, best = trained
    path = with_prior(best, tmp_path, 0.0)
    assert Predictor.load(path, torch.device("cpu")).span_prior is None
    out = json.loads(run_evaluate(["--checkpoint", str(path), "--json"], root).stdout)
    assert "span_prior_weight" not in out


def test_didemo_gets_no_prior(tmp_path):
    store = SimpleNamespace(manifest={"dataset": "didemo"},
                            splits={"train": [Query("a", "x", 30.0, [[0, 5]])], "val": [Query("a", "x", 30.0, [[0, 5]])]})
    assert span_prior_fit.fit_checkpoint(tmp_path / "missing.pt", store, torch.device("cpu")) is None


def test_a_val_split_without_times_selects_by_matching_and_fits_no_prior(tmp_path):
    import shutil

    src = tiny_synthetic(tmp_path / "a")
    dst = tmp_path / "b" / "synthetic"
    shutil.copytree(src, dst)
    lines = [json.loads(x) for x in (dst / "val.jsonl").read_text().splitlines()]
    (dst / "val.jsonl").write_text("".join(json.dumps({k: v for k, v in x.items() if k != "times"}) + "\n"
                                           for x in lines))
    store = load_store(dst)
    assert store.split("val") and not any(q.times for q in store.split("val"))
    out = tmp_path / "run"
    summary = training.train(load_settings("synthetic", overrides=TINY), store, out, torch.device("cpu"),
                             progress=False)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("val_match" in r and "val_miou" not in r for r in records)  # no times: by matching
    top = max(r["val_match"] for r in records)
    assert summary["best_epoch"] == next(r["epoch"] for r in records if r["val_match"] == top)
    assert "span_prior" not in checkpoint.load(out / "best.pt")


def test_ground_shows_the_map_the_scores_read_and_marks_moved_answers(trained, tmp_path):
    import h5py
    from typer.testing import CliRunner

    from fsan_cli.app import app

    _, store, best = trained
    q = store.split("test")[0]
    video = tmp_path / "v.h5"
    with h5py.File(video, "w") as f:
        f.create_dataset("features", data=np.asarray(store.features[store.video_index[q.video]]))
        f.attrs["duration"] = q.duration
    texts = sorted({x.query for x in store.split("test")})[:6]
    seen = set()
    for weight in (0.05, 1e-7):  # a prior that moves every answer here, and one that moves none
        path = with_prior(best, tmp_path, weight)

        def ground(*args, path=path):
            return CliRunner().invoke(app, ["--device", "cpu", "ground", str(video), *texts, "--checkpoint",
                                            str(path), "--precision", "fp32", *args], env={"COLUMNS": "120"})

        rows = [json.loads(x) for x in ground("--json").stdout.splitlines()]
        assert len(rows) == len(texts)
        for row in rows:
            p = np.array(row["alignment_map"]["values"])
            assert row["score_map"]["kind"] == "centered"
            np.testing.assert_allclose(row["score_map"]["values"], p - p.mean(1, keepdims=True), atol=2e-4)
            prior = row["span_prior"]
            assert prior["weight"] == weight
            assert set(prior) == {"weight", "changed"}
            assert prior["changed"] == (row["model_moments"][0][:2] != row["moments"][0][:2])
            seen.add(prior["changed"])
        blocks = ground().stdout.split("\n\n")
        assert len(blocks) == len(texts)
        for block, row in zip(blocks, rows, strict=True):
            assert "P centred (each word's mean over the clips removed), the map the segment scores read" in block
            own = row["model_moments"][0]
            marked = any(line.lstrip().startswith("model ") for line in block.splitlines())
            if row["span_prior"]["changed"]:
                assert f"the model alone answers {own[0]:.2f}-{own[1]:.2f} s" in block and marked
            else:
                assert "The top answer is the model's own." in block and not marked
    assert seen == {True, False}  # both kinds were shown


def test_predictions_with_span_prior_fields(trained, tmp_path):
    root, _, best = trained
    path = with_prior(best, tmp_path, 0.05)
    saved = tmp_path / "p.jsonl"
    assert run_evaluate(["--checkpoint", str(path), "--save-predictions", str(saved)], root).exit_code == 0
    text = saved.read_text()
    own = json.loads(run_evaluate(["--predictions", "-", "--json", "--no-span-prior"], root, input=text).stdout)
    plain = json.loads(run_evaluate(["--checkpoint", str(best), "--json", "--no-span-prior"], root).stdout)
    assert {k: own[k] for k in plain if k.startswith(("r@", "miou"))} == {k: plain[k] for k in plain if k.startswith(("r@", "miou"))}
    rows = [json.loads(x) for x in text.splitlines()]
    assert all(set(r["span_prior"]) == {"weight", "changed"} and "model_moments" in r for r in rows)
    for bad, drop in (({}, False), ({"weight": "abc", "changed": True}, False), ({"weight": 0.1, "changed": "no"}, False),
                      ({"weight": float("nan"), "changed": True}, False), ({"weight": 0.1, "changed": True}, True)):
        broken = [dict(r) for r in rows]
        broken[1]["span_prior"] = bad
        if drop:
            del broken[1]["model_moments"]
        r = run_evaluate(["--predictions", "-", "--json"], root, input="".join(json.dumps(x) + "\n" for x in broken))
        assert r.exit_code == 1
        assert r.stderr.strip().splitlines()[-1].startswith('Error: prediction row 2 has a malformed "span_prior"')
    # a file written before the model's own answers were named "model_moments" scores the same
    older = [{**{k: v for k, v in r.items() if k != "model_moments"},
              "span_prior": {**r["span_prior"], "moments": r["model_moments"]}} for r in rows]
    old = json.loads(run_evaluate(["--predictions", "-", "--json", "--no-span-prior"], root,
                                  input="".join(json.dumps(x) + "\n" for x in older)).stdout)
    assert {k: old[k] for k in own if k.startswith(("r@", "miou"))} == {k: own[k] for k in own if k.startswith(("r@", "miou"))}
    # --no-span-prior cannot choose the model's own answers when a row has none
    mixed = [dict(r) for r in rows]
    del mixed[2]["span_prior"]
    r = run_evaluate(["--predictions", "-", "--json", "--no-span-prior"], root,
                     input="".join(json.dumps(x) + "\n" for x in mixed))
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines()[-1] == (
        'Error: prediction row 3 has no "span_prior" field, though other rows of the file do. '
        "Score a file whose rows all come from one run (fsan evaluate --save-predictions).")


def test_whether_the_prior_is_used_is_fixed_when_the_predictor_is_made(trained, tmp_path):
    _, _, best = trained
    path = with_prior(best, tmp_path, 0.05)
    assert Predictor.load(path, torch.device("cpu")).span_prior.weight == 0.05
    p = Predictor.load(path, torch.device("cpu"), span_prior=False)
    assert p.span_prior is None and p.weighted_prior() is None
    with pytest.raises(AttributeError):
        p.span_prior = None


def test_a_damaged_or_mismatched_prior_is_said(trained, tmp_path, capsys):
    from fsan_cli.core.errors import FsanError

    _, _, best = trained
    ckpt = checkpoint.load(best)
    ckpt["span_prior"] = {"log_prior": torch.zeros(32), "weight": 0.1}
    checkpoint.save(ckpt, tmp_path / "flat.pt")
    with pytest.raises(FsanError, match="the span prior stored in .* is damaged"):
        Predictor.load(tmp_path / "flat.pt", torch.device("cpu"))
    ckpt["span_prior"] = {"log_prior": torch.zeros(16, 16), "weight": 0.1}
    checkpoint.save(ckpt, tmp_path / "nv16.pt")
    assert Predictor.load(tmp_path / "nv16.pt", torch.device("cpu")).span_prior is None
    assert "the span prior in" in capsys.readouterr().err
