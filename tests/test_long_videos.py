"""Videos longer than the model was trained on are read in windows at its own resolution
(fsan_cli/predict/windows.py): a moment straddling two windows is found, answers do not depend
on the batch or the windows' order, a video within the trained range is answered exactly as
before, and every path (ground, evaluate --checkpoint, ground | evaluate) agrees."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fsan_cli.app import app
from fsan_cli.ground import render
from fsan_cli.predict import predictor as predictor_module
from fsan_cli.predict import windows
from fsan_cli.predict.predictor import Predictor
from models.config import FSANConfig
from models.fsan import FSAN, FSANOutput
from models.segments import segment_scores

CLIPS = 16
DURATIONS = {"min": 20.0, "p50": 60.0, "p90": 80.0, "max": 100.0, "videos": 50, "rows_per_second": 1.0}


class Oracle(FSAN):
    """A model whose alignment map is the clips' first feature for every token: it grounds any
    query on the rows marked high there, so where an answer lands tests the windowing alone."""

    def forward(self, video, tokens, token_mask=None):
        mask = tokens != 0
        p = video[..., 0].float()[:, None, :].expand(-1, tokens.shape[1], -1).contiguous()
        return FSANOutput(p, segment_scores(self.sc_input(p, mask), mask), mask)


def oracle(durations=DURATIONS) -> Predictor:
    cfg = FSANConfig(hidden=8, layers=0, heads=1, align_dim=8, word_dim=4, feature_dim=4, clips=CLIPS,
                     sc_map="centered", match_score="inner", match_tau=0.05)
    model = Oracle(cfg, word_vectors=torch.randn(4, 4)).eval()
    data = {"clips": CLIPS, "feature_dim": 4, "normalize": True, "pca": None, "durations": durations}
    return Predictor(model, ["<pad>", "<unk>", "person", "walks"], data, 0.5, torch.device("cpu"))


def marked(seconds: int, moment: tuple[int, int], strength: float = 0.9, seed: int = 0) -> np.ndarray:
    """(T, 4) rows at 1 a second: the first feature high inside `moment`, low elsewhere."""
    rng = np.random.default_rng(seed)
    x = np.zeros((seconds, 4), np.float32)
    x[:, 0] = -strength
    x[moment[0]: moment[1], 0] = strength
    x[:, 1:] = np.sqrt(1 - strength**2) / np.sqrt(3) + rng.normal(0, 0.01, (seconds, 3))
    return x


def iou(a, b) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


def test_windows_cover_a_long_video_and_skip_a_short_one():
    w = windows.Windowing.of({"durations": DURATIONS})
    assert w.spans(100, 100.0) is None  # within the trained range
    spans = w.spans(600, 600.0)
    assert spans[0].tolist() == [0, 60] and spans[-1][1] == 600  # the median train duration
    assert (np.diff(spans[:, 0]) <= 30).all() and (spans[:, 1] - spans[:, 0] == 60).all()
    assert windows.Windowing.of({}) is None and windows.Windowing.of({"durations": {"p90": "x"}}) is None
    assert windows.Windowing.of({"durations": {**DURATIONS, "max": True}}) is None  # not a 1 s range


def test_a_moment_straddling_two_windows_is_found():
    p = oracle()
    # windows of 60 s every 30 s: [0, 60), [30, 90), [60, 120), ...; the moment 70-95 s crosses 90 s
    rows = marked(600, (70, 95))
    answers, found = windows.ground(p, [rows], ["long"], [600.0], np.array([0]), np.array([600.0]),
                                    ["person walks"], 5)
    top = answers.seconds[0][0]
    assert iou(top, (70, 95)) >= 0.7, top
    assert answers.windows[0][0][0] <= 70 and answers.windows[0][0][1] >= 95
    row = answers.row(0, "long", "person walks", 600.0, 5)
    assert row["window"] == [float(x) for x in answers.windows[0][0]] and len(row["windows"]) == 5
    assert found[0].moments[0].tolist() == top.tolist()
    # ranked best first: the scores never rise down the list, though windows take turns in it
    assert (np.diff(answers.predictions.scores[0]) <= 0).all()
    assert found[0].windowed and render.prior_note(found[0]).startswith(
        "Scores: the word coverage of each moment's window (a long video is read in windows, which take turns")
    # pooled whole into 16 clips (37.5 s each), the same video's answer is coarse
    whole = p.ground(p.video_clips(rows, "long")[None], np.array([0]), np.array([600.0]), ["person walks"], 5)[0]
    assert iou(whole.seconds[0][0], (70, 95)) < iou(top, (70, 95))


def test_answers_do_not_depend_on_batch_or_window_order(monkeypatch):
    p = oracle()
    videos = [marked(500, (300, 330), seed=1), marked(50, (10, 20), seed=2), marked(430, (37, 52), seed=3)]
    seconds = [500.0, 50.0, 430.0]
    video = np.array([0, 1, 2, 0, 2, 1, 2])
    texts = ["person walks", "walks", "person", "walks person", "person walks walks", "person", "walks"]
    durations = np.array([seconds[v] for v in video])
    _, long = windows.cut(p, videos, seconds, ["a", "b", "c"], windows.Windowing.of(p.data))
    first, _ = windows.answer_long(p, long, video[video != 1], [t for t, v in zip(texts, video, strict=True) if v != 1], 5)
    monkeypatch.setattr(predictor_module, "CPU_BATCH", 1)
    order = np.concatenate([np.flatnonzero(long.video == v)[::-1] for v in (2, 0)])  # windows reversed
    shuffled = windows.Long(long.clips[order], long.video[order], long.seconds[order])
    again, _ = windows.answer_long(p, shuffled, video[video != 1], [t for t, v in zip(texts, video, strict=True) if v != 1], 5)
    np.testing.assert_array_equal(first.seconds, again.seconds)
    np.testing.assert_array_equal(first.windows, again.windows)
    np.testing.assert_array_equal(first.predictions.scores, again.predictions.scores)
    both = windows.ground(p, videos, ["a", "b", "c"], seconds, video, durations, texts, 5)[0]
    np.testing.assert_array_equal(both.seconds[video != 1], first.seconds)
    assert np.isnan(both.windows[video == 1]).all()


def test_a_short_video_is_answered_exactly_as_before():
    p = oracle()
    videos = [marked(90, (30, 50), seed=4), marked(64, (5, 9), seed=5)]
    video, texts = np.array([0, 1, 0]), ["person walks", "walks", "person"]
    durations = np.array([90.0, 64.0, 90.0])
    new, found = windows.ground(p, videos, ["a", "b"], [90.0, 64.0], video, durations, texts, 5)
    clips = np.stack([p.video_clips(x, n) for x, n in zip(videos, "ab", strict=True)])
    old, before = p.ground(clips, video, durations, texts, 5)
    assert new.windows is None
    np.testing.assert_array_equal(new.seconds, old.seconds)
    np.testing.assert_array_equal(new.predictions.scores, old.predictions.scores)
    for a, b in zip(found, before, strict=True):
        np.testing.assert_array_equal(a.alignment_map, b.alignment_map)
    # a checkpoint of an older fsan records no durations: nothing is windowed
    older = oracle(durations=None)
    long = marked(600, (70, 95))
    got = windows.ground(older, [long], ["x"], [600.0], np.array([0]), np.array([600.0]), ["walks"], 5)[0]
    want = older.ground(older.video_clips(long, "x")[None], np.array([0]), np.array([600.0]), ["walks"], 5)[0]
    np.testing.assert_array_equal(got.seconds, want.seconds)


def laid_end_to_end(src, split: str, k: int) -> tuple[list[dict], dict[str, np.ndarray], list]:
    """The first 2k videos of `split` laid end to end, k to a long video (their clips as rows):
    the long videos' records, their rows, and the split's queries with their times shifted."""
    from fsan_cli.data.store import Query

    index, asked = src.video_index, src.split(split)
    names = list(dict.fromkeys(q.video for q in asked))
    videos, rows, queries = [], {}, []
    for n, part in enumerate((names[:k], names[k: 2 * k])):
        name, offset, pieces, mine = f"{split}-long{n}", 0.0, [], []
        for v in part:
            pieces.append(np.asarray(src.features[index[v]]))
            mine += [Query(name, q.query, 0.0, [[a + offset, b + offset] for a, b in q.times])
                     for q in asked if q.video == v]
            offset += float(src.videos[index[v]]["duration"])
        for q in mine:
            q.duration = offset
        queries += mine
        rows[name] = np.concatenate(pieces)
        videos.append({"video": name, "duration": offset, "rows": len(rows[name])})
    return videos, rows, queries


def test_a_long_video_through_ground_into_evaluate_scores_as_evaluate_checkpoint(tmp_path, monkeypatch):
    """Synthetic test videos laid end to end (five per long video, longer than any train video),
    prepared into a store that keeps their rows: `fsan ground --queries ... --json | fsan evaluate
    --predictions -` scores exactly as `fsan evaluate --checkpoint`, and the rows name windows."""
    from fsan_cli.core.checkpoint import load as load_checkpoint
    from fsan_cli.core.settings import load_settings
    from fsan_cli.data.store import load_store, long_videos, write_store
    from fsan_cli.data.synthetic import ensure_synthetic
    from fsan_cli.train import loop as training

    src = load_store(ensure_synthetic(tmp_path / "data", sizes={"train": 40, "val": 10, "test": 10}))
    tiny = ["model.hidden=32", "model.layers=1", "model.heads=2", "model.align_dim=16", "train.epochs=1"]
    training.train(load_settings("synthetic", overrides=tiny), src, tmp_path / "run", torch.device("cpu"),
                   progress=False)
    ckpt = tmp_path / "run" / "best.pt"
    assert load_checkpoint(ckpt)["data"]["durations"]["max"] > 0
    videos, rows, queries = laid_end_to_end(src, "test", 5)
    durations = {v["video"]: v["duration"] for v in videos}
    assert long_videos({"test": queries}, durations, list(durations)) == set(durations)
    assert min(durations.values()) > load_checkpoint(ckpt)["data"]["durations"]["max"]
    from fsan_cli.data.features import video_clips
    features = np.stack([video_clips(rows[v["video"]], src.clips) for v in videos])
    write_store(tmp_path / "long" / "custom", {**src.manifest, "dataset": "custom"}, features, videos,
                src.vocab, np.asarray(src.vectors), {"test": queries}, raw=rows)
    with h5py.File(tmp_path / "long.h5", "w") as h5:
        for name, x in rows.items():
            h5.create_group(name).create_dataset("c3d_features", data=x)
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"video": q.video, "query": q.query}) + "\n"
                                                  for q in queries))
    env = {"FSAN_DATA_DIR": str(tmp_path / "long")}

    def fsan(*args, input=None):
        return CliRunner().invoke(app, ["--device", "cpu", *args], input=input, env=env)

    grounded = fsan("ground", str(tmp_path / "long.h5"), "--queries", str(tmp_path / "pairs.jsonl"),
                    "--checkpoint", str(ckpt), "--json", "--precision", "fp32", "--dataset", "custom")
    assert grounded.exit_code == 0, grounded.stderr
    lines = [json.loads(line) for line in grounded.stdout.splitlines()]
    assert all(len(r["window"]) == 2 and r["window"][1] - r["window"][0] < r["duration"] for r in lines)
    piped = fsan("evaluate", "--dataset", "custom", "--split", "test", "--predictions", "-", "--json",
                 input=grounded.stdout)
    direct = fsan("evaluate", "--dataset", "custom", "--split", "test", "--checkpoint", str(ckpt), "--json")
    assert piped.exit_code == direct.exit_code == 0, piped.stderr + direct.stderr
    assert json.loads(piped.stdout) == json.loads(direct.stdout)
    one = fsan("ground", str(tmp_path / "long.h5"), queries[0].query, "--video-id", "test-long0",
               "--checkpoint", str(ckpt), "--json", "--precision", "fp32", "--dataset", "custom")
    assert one.exit_code == 0, one.stderr
    spans = windows.Windowing.of(load_checkpoint(ckpt)["data"]).spans(len(rows["test-long0"]), durations["test-long0"])
    assert (f"read in {len(spans)} windows of " in one.stderr
            and "clips each (longer than the model's training videos)" in one.stderr)

    # fsan export of a long video writes the rows the store keeps: ground reads them in windows
    asked = [q.query for q in queries if q.video == "test-long0"]
    (tmp_path / "asked.jsonl").write_text("".join(json.dumps({"query": t}) + "\n" for t in asked))
    want = [r["moments"] for r in lines if r["video"] == "test-long0"]
    exported = fsan("export", "test-long0", "--dataset", "custom", "--out", str(tmp_path / "x.h5"))
    assert exported.exit_code == 0, exported.stderr
    from_export = fsan("ground", str(tmp_path / "x.h5"), "--queries", str(tmp_path / "asked.jsonl"),
                       "--checkpoint", str(ckpt), "--json", "--precision", "fp32")
    assert from_export.exit_code == 0, from_export.stderr
    assert [json.loads(r)["moments"] for r in from_export.stdout.splitlines()] == want
    # a store that keeps only pooled clips: its export is marked so, and ground answers from the clips
    # as evaluate does, without a duration warning (the clips are not rows a second)
    write_store(tmp_path / "pooled" / "custom", {**src.manifest, "dataset": "custom"}, features,
                [{k: v for k, v in x.items() if k != "raw_at"} for x in videos], src.vocab, np.asarray(src.vectors),
                {"test": queries})
    env["FSAN_DATA_DIR"] = str(tmp_path / "pooled")
    saved = fsan("evaluate", "--dataset", "custom", "--split", "test", "--checkpoint", str(ckpt), "--json",
                 "--save-predictions", str(tmp_path / "p.jsonl"))
    assert saved.exit_code == 0 and "keeps only their pooled clips" in saved.stderr
    want = [r["moments"] for r in map(json.loads, (tmp_path / "p.jsonl").read_text().splitlines())
            if r["video"] == "test-long0"]
    exported = fsan("export", "test-long0", "--dataset", "custom", "--out", str(tmp_path / "y.h5"))
    assert exported.exit_code == 0, exported.stderr
    from_export = fsan("ground", str(tmp_path / "y.h5"), "--queries", str(tmp_path / "asked.jsonl"),
                       "--checkpoint", str(ckpt), "--json", "--precision", "fp32")
    assert from_export.exit_code == 0, from_export.stderr
    assert "check its duration" not in from_export.stderr and "read in" not in from_export.stderr
    assert "'test-long0' holds the video pooled to 32 clips (fsan export), and at 583.39 s it is longer than" in (
        " ".join(from_export.stderr.split()))
    got = [json.loads(r)["moments"] for r in from_export.stdout.splitlines()]
    np.testing.assert_allclose(np.array(got)[..., :2], np.array(want)[..., :2], atol=1e-4)


def merge_loop(seconds, window_score, valid, k, nms, begin, interleave):
    """windows.merge, one query and one candidate at a time (no cuts)."""
    q, w, c, _ = seconds.shape
    out = []
    for i in range(q):
        cands = [(a * c + r, a, r) for a in range(w) for r in range(c)]
        if interleave:
            key = [(r, -window_score[i, a] if valid[i, a] else np.inf, begin[i, a]) for _, a, r in cands]
        else:
            key = [(-window_score[i, a] if valid[i, a] else np.inf, begin[i, a], r) for _, a, r in cands]
        order = sorted(range(len(cands)), key=lambda j: key[j])  # stable: ties keep index order
        taken, suppressed, picks = set(), set(), []
        for _ in range(min(k, w * c)):
            ok = [j for j in order if valid[i, cands[j][1]] and j not in taken]
            free = [j for j in ok if j not in suppressed]
            j = free[0] if free else ok[0] if ok else order[0]
            picks.append(j)
            taken.add(j)
            s0, e0 = seconds[i, cands[j][1], cands[j][2]]
            for m, (_, a, r) in enumerate(cands):
                s1, e1 = seconds[i, a, r]
                inter = max(0.0, min(e0, e1) - max(s0, s1))
                union = max(e0, e1) - min(s0, s1)
                if (inter / union if union > 0 else 0.0) > nms:
                    suppressed.add(m)
        out.append(picks)
    return np.array(out)


def test_merge_against_a_plain_loop_on_random_candidates():
    rng = np.random.default_rng(0)
    for trial in range(20):
        q, w, c, k = 4, int(rng.integers(1, 6)), int(rng.integers(1, 5)), int(rng.integers(1, 8))
        start = rng.uniform(0, 100, (q, w, c))
        seconds = np.stack([start, start + rng.uniform(1, 30, (q, w, c))], -1).round(0)  # ties in IoU
        score = rng.integers(0, 3, (q, w)).astype(np.float32)  # ties between windows
        valid = rng.random((q, w)) < 0.8
        begin = rng.integers(0, 4, (q, w)).astype(np.float64)
        for interleave in (False, True):
            got = windows.merge(seconds, score, valid, k, 0.5, begin=begin, interleave=interleave)
            want = merge_loop(seconds, score, valid, k, 0.5, begin, interleave)
            np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}, interleave {interleave}")


def test_interleaved_top_k_takes_each_windows_first_in_turn():
    # two windows' candidates, none overlapping: window 1 scores higher
    seconds = np.array([[[[0, 10], [20, 30], [40, 50]], [[100, 110], [120, 130], [140, 150]]]], float)
    score, valid = np.array([[1.0, 2.0]]), np.ones((1, 2), bool)
    assert windows.merge(seconds, score, valid, 4, 0.5, interleave=False).tolist() == [[3, 4, 5, 0]]
    assert windows.merge(seconds, score, valid, 4, 0.5, interleave=True).tolist() == [[3, 0, 4, 1]]


def long_store(root, minutes: float, moment_s: float, videos: int = 8, split: str = "train"):
    """A prepared custom store of `videos` videos of `minutes` each, one moment of `moment_s` seconds."""
    from fsan_cli.data.store import load_store

    rng = np.random.default_rng(1)
    features, annotations = root / "feats.h5", root / "mine.jsonl"
    lines = []
    with h5py.File(features, "w") as h5:
        for v in range(videos):
            rows = int(minutes * 60 / 2)
            h5.create_dataset(f"v{v}", data=rng.normal(size=(rows, 8)).astype("f4"))
            s = float(rng.uniform(0, minutes * 60 - moment_s))
            lines.append(json.dumps({"video": f"v{v}", "duration": minutes * 60.0, "query": "person walks",
                                     "times": [[s, s + moment_s]], "split": split}))
    annotations.write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(app, ["--device", "cpu", "prepare", "-d", "custom", "--annotations", str(annotations),
                                 "--features", str(features), "--clips", "16"],
                           env={"FSAN_DATA_DIR": str(root / "data"), "NO_COLOR": "1"})
    assert r.exit_code == 0, r.output
    return load_store(root / "data" / "custom")


def test_train_warns_where_moments_are_shorter_than_a_clip(tmp_path):
    from fsan_cli.train.fit import too_coarse

    # 20-minute videos read as 16 clips (75 s a clip), 10-second moments: none spans a clip
    (tmp_path / "long").mkdir()
    message = too_coarse(long_store(tmp_path / "long", 20, 10))
    assert message == ("100% of the annotated moments (all splits) are shorter than one clip of their video: each "
                       "video is read "
                       "as 16 clips (median 75.0 s a clip), and a moment shorter than a clip cannot be told from its "
                       "neighbours, so the model cannot learn to place it. Cut the videos into parts of a few minutes "
                       "(fsan ground and evaluate read longer videos in windows), or prepare the data with more clips "
                       "(fsan prepare --clips 128)")
    from tests.helpers import TINY_MODEL, set_args

    r = CliRunner().invoke(app, ["--device", "cpu", "train", "-d", "custom", "--out", str(tmp_path / "run"),
                                 "--epochs", "1", *set_args(TINY_MODEL), "--set", "data.clips=16"],
                           env={"FSAN_DATA_DIR": str(tmp_path / "long" / "data"), "NO_COLOR": "1", "COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    assert f"Warning: {message}" in r.stderr.replace("\n", " ")
    # 20-minute videos and 2-second moments: more clips than can be trained would be needed; not suggested
    (tmp_path / "tiny").mkdir()
    message = too_coarse(long_store(tmp_path / "tiny", 20, 2))
    assert "--clips" not in message and message.endswith("(fsan ground and evaluate read longer videos in windows)")
    # 2-minute videos (7.5 s a clip), 20-second moments: every moment spans clips
    (tmp_path / "short").mkdir()
    assert too_coarse(long_store(tmp_path / "short", 2, 20)) is None
    # no train split: the error that says so, not a warning about training first
    (tmp_path / "test_only").mkdir()
    long_store(tmp_path / "test_only", 20, 10, split="test")
    r = CliRunner().invoke(app, ["--device", "cpu", "train", "-d", "custom", "--out", str(tmp_path / "run2"),
                                 "--epochs", "1", *set_args(TINY_MODEL), "--set", "data.clips=16"],
                           env={"FSAN_DATA_DIR": str(tmp_path / "test_only" / "data"), "NO_COLOR": "1"})
    assert r.exit_code == 1 and "Error: split 'train' is not in the store" in r.stderr and "Warning" not in r.stderr


def test_train_validates_long_val_videos_in_windows_as_evaluate_does(tmp_path, monkeypatch):
    """Val videos longer than every train video, whose rows the store keeps, are read in windows
    by the validation inside `fsan train`: the epoch's val mIoU is what `fsan evaluate --split val`
    of its checkpoint says."""
    from fsan_cli.core.settings import load_settings
    from fsan_cli.data.features import video_clips
    from fsan_cli.data.store import load_store, write_store
    from fsan_cli.data.synthetic import ensure_synthetic
    from fsan_cli.train import loop as training

    src = load_store(ensure_synthetic(tmp_path / "data", sizes={"train": 40, "val": 10, "test": 10}))
    long, rows, val = laid_end_to_end(src, "val", 5)
    index = src.video_index
    train = src.split("train")
    short = list(dict.fromkeys(q.video for q in train))
    videos = [dict(src.videos[index[v]]) for v in short] + long
    features = np.stack([np.asarray(src.features[index[v]]) for v in short]
                        + [video_clips(rows[v["video"]], src.clips) for v in long])
    write_store(tmp_path / "long" / "custom", {**src.manifest, "dataset": "custom"}, features, videos,
                src.vocab, np.asarray(src.vectors), {"train": train, "val": val}, raw=rows)
    store = load_store(tmp_path / "long" / "custom")
    called = []
    real = windows.answer_split
    monkeypatch.setattr(windows, "answer_split", lambda *a, **k: called.append(1) or real(*a, **k))
    tiny = ["model.hidden=32", "model.layers=1", "model.heads=2", "model.align_dim=16", "train.epochs=1"]
    training.train(load_settings("custom", overrides=tiny), store, tmp_path / "run", torch.device("cpu"),
                   progress=False)
    assert called
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    r = CliRunner().invoke(app, ["--device", "cpu", "evaluate", "--dataset", "custom", "--split", "val",
                                 "--checkpoint", str(tmp_path / "run" / "best.pt"), "--json", "--no-span-prior"],
                           env={"FSAN_DATA_DIR": str(tmp_path / "long")})
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["miou"] == pytest.approx(record["val_miou"], abs=0.01)


def test_word_coverage_against_a_plain_loop():
    from models.segments import word_coverage

    rng = np.random.default_rng(3)
    p = torch.from_numpy(rng.normal(size=(6, 5, 9)).astype(np.float32))
    mask = torch.from_numpy(rng.random((6, 5)) < 0.7)
    mask[0] = False  # a query of no real token scores 0
    want = []
    for b in range(6):
        best = [max(float(p[b, t, c]) for c in range(9)) for t in range(5) if mask[b, t]]
        want.append(sum(best) / len(best) if best else 0.0)
    np.testing.assert_allclose(word_coverage(p, mask).numpy(), want, rtol=1e-6, atol=1e-7)


def test_the_terminal_map_of_a_long_video_reads_its_window_and_shows_the_whole_video():
    from rich.console import Console

    from fsan_cli.ground.render import heatmap
    from fsan_cli.predict.answers import Grounding

    g = Grounding("person walks", ["person", "walks"], [], np.array([[20, 30], [0, 5]]),
                  np.array([[1300.0, 1400.0], [200.0, 300.0]]), np.array([1.0, 0.5]),
                  np.linspace(0, 1, 128).reshape(2, 64))
    console = Console(width=100, color_system=None, record=True)
    console.print(heatmap(g, 7200.0, False, 100, [1200.0, 1440.0], [[1300.0, 1400.0], [200.0, 300.0], [5000, 5100]]))
    lines = console.export_text().splitlines()
    assert lines[0].startswith("Alignment map P, words x 64 clips of 3.75 s of the window 20:00-24:00 that answered")
    assert lines[-4].split() == ["20:00", "20:49", "21:38", "22:22", "23:11", "24:00"]  # the window's times
    assert lines[-3] == " video |--2-------==1-------------------------------3-------------------|"
    assert lines[-2].split() == ["0:00", "2:00:00"]
    assert lines[-1].strip() == "the whole video: === the window above, 1-3 the top moments"
    # a video within the trained range: no strip, times from 0
    console = Console(width=100, color_system=None, record=True)
    console.print(heatmap(g, 240.0, False, 100))
    lines = console.export_text().splitlines()
    assert lines[-1].split()[0] == "0:00" and "video |" not in console.export_text()


def test_the_plot_of_a_long_video_shows_the_whole_video_above_its_windows_map(tmp_path):
    import matplotlib

    from fsan_cli.ground import render
    from fsan_cli.ground.grounding import Grounded
    from fsan_cli.predict.answers import Grounding

    rng = np.random.default_rng(0)
    long = Grounding("person walks", ["person", "walks"], [], np.array([[20, 30], [0, 5]]),
                     np.array([[1300.0, 1400.0], [200.0, 300.0]]), np.array([1.0, 0.5]), rng.random((2, 64)))
    row = {"video": "lecture", "duration": 7200.0, "window": [1200.0, 1440.0],
           "moments": [[1300.0, 1400.0, 1.0], [200.0, 300.0, 0.5], [5000.0, 5100.0, 0.4]]}
    short = Grounding("walks", ["walks"], [], np.array([[3, 10]]), np.array([[30.0, 60.0]]), np.array([1.0]),
                      rng.random((1, 64)))
    fig = render.save_plot(tmp_path / "f.png", [Grounded("short", 240.0, short, {"moments": [[30.0, 60.0, 1.0]]}),
                                                Grounded("lecture", 7200.0, long, row)])
    axes = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert [bool(a.images) for a in axes] == [True, False, True]  # short map, the long one's strip, its map
    strip, window_map = axes[1], axes[2]
    assert strip.get_xlim() == (0.0, 7200.0) and window_map.get_xlim() == (1200.0, 1440.0)
    assert strip.get_title(loc="left").startswith("\u201cperson walks\u201d in lecture, 1200-1440 s of 7200 s")
    (shade,) = strip.patches
    assert (shade.get_x(), shade.get_width()) == (1200.0, 240.0)
    assert [t.get_text() for t in strip.texts] == ["1", "2", "3"]
    fig.canvas.draw()
    labels = [t.get_text() for t in strip.get_xticklabels() if t.get_visible()]
    assert {"0:00", "15:00", "1:00:00", "2:00:00"} <= set(labels)  # whole minutes and hours
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()][-1].startswith("the window shown below")
    assert [a.get_label() for a in fig.axes].count("<colorbar>") == 1
    matplotlib.pyplot.close(fig)


def test_scores_never_rise_down_a_long_videos_list():
    """Four windows take turns in a top-8: raw, the scores would go 0.90, 0.75, -0.90, 0.90, ..."""
    p = oracle()
    x = marked(150, (70, 85))
    x[10:20, 0] = 0.5
    answers, _ = windows.ground(p, [x], ["long"], [150.0], np.array([0]), np.array([150.0]), ["person walks"], 8)
    scores = answers.predictions.scores[0]
    assert (np.diff(scores) <= 0).all() and scores[0] > 0.9 and iou(answers.seconds[0][0], (70, 85)) > 0.7


def test_a_duration_far_from_the_rows_is_said(capsys):
    p = oracle()  # trained on 1 row a second
    x = marked(5, (1, 3))
    windows.ground(p, [x], ["few"], [100000.0], np.array([0]), np.array([100000.0]), ["walks"], 1)
    err = " ".join(capsys.readouterr().err.split())
    assert ("Warning: few has 5 feature rows for 100000 s (5e-05 a second), and the model was trained on 1 row a "
            "second: check its duration") in err
    windows.ground(p, [marked(90, (10, 20))], ["fine"], [100.0], np.array([0]), np.array([100.0]), ["walks"], 1)
    assert "Warning" not in capsys.readouterr().err


def test_a_window_as_long_as_the_video_is_todays_path():
    """A checkpoint whose videos all last 30 s (DiDeMo's 6 rows): a video of 30.01 s would be one
    window over all of it, and is answered as a video within the range (its segments, no NMS)."""
    w = windows.Windowing.of({"durations": {"p50": 30.0, "max": 30.0}})
    assert w.spans(6, 30.01) is None
    assert w.spans(6, 30.0) is None and len(w.spans(12, 60.0)) == 3


def test_non_finite_rows_of_a_long_video_are_said_once(capsys):
    p = oracle()
    x = marked(400, (70, 85))
    x[::50, 2] = np.nan  # 8 rows, each in two overlapping windows
    with_nan, _ = windows.ground(p, [x], ["holes"], [400.0], np.array([0]), np.array([400.0]), ["walks"], 3)
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("hold NaN or inf") == 1 and "8 feature rows of 'holes' hold NaN or inf; read as zeros" in err
    zeroed, _ = windows.ground(p, [np.nan_to_num(x, nan=0.0)], ["holes"], [400.0], np.array([0]), np.array([400.0]),
                               ["walks"], 3)
    np.testing.assert_array_equal(with_nan.seconds, zeroed.seconds)


@pytest.mark.parametrize("durations", [[1.0, 2.0], {**DURATIONS, "rows_per_second": "x"}, {**DURATIONS, "rows_per_second": None}])
def test_a_damaged_duration_record_does_not_stop_grounding(durations):
    p = oracle(durations)
    answers, _ = windows.ground(p, [marked(400, (70, 85))], ["v"], [400.0], np.array([0]), np.array([400.0]),
                                ["walks"], 1)
    assert answers.seconds.shape == (1, 1, 2)


def test_what_was_read_names_the_windows_as_cut(capsys):
    """3 rows for 1000 s: a window is one row, 333 s (not the 60 s asked for); several videos say
    how many were read in windows."""
    from types import SimpleNamespace

    from fsan_cli.ground import grounding

    read = SimpleNamespace(unknown=[])
    p = oracle()
    few = grounding.Video("few", marked(3, (1, 2)), 1000.0, "f.h5")
    grounding._say_what_was_read(p, [few], [1000.0], [read], 5.0)
    err = " ".join(capsys.readouterr().err.split())
    assert "'few': 3 rows of 4-d, 1000 s, read in 3 windows of 333 s, 16 clips each" in err and "1 query (5/s" in err
    short = grounding.Video("short", marked(50, (1, 2)), 50.0, "f.h5")
    long = grounding.Video("long", marked(400, (1, 2)), 400.0, "f.h5")
    grounding._say_what_was_read(p, [short, long], [50.0, 400.0], [read, read], 5.0)
    err = " ".join(capsys.readouterr().err.split())
    assert ("2 videos, 16 clips each (1 longer than the model's training videos, read in 13 windows of 60 s); "
            "2 queries") in err


def test_the_models_own_answer_of_a_long_video_is_drawn_where_it_lies():
    """The span prior moved the top answer, and the model's own came from another window: the
    'model' line says where it lies, not its clips laid on this window's axis; from this
    window, its bar is where its clips are."""
    from rich.console import Console

    from fsan_cli.ground.render import heatmap
    from fsan_cli.predict.answers import Grounding

    def model_line(model_top):
        g = Grounding("person walks", ["person", "walks"], [], np.array([[20, 30]]), np.array([[1300.0, 1400.0]]),
                      np.array([1.0]), np.linspace(0, 1, 128).reshape(2, 64), prior_changed=True,
                      model_top=model_top, windowed=True)
        console = Console(width=200, color_system=None, record=True)  # the map 100 wide, its notes unwrapped
        console.print(heatmap(g, 7200.0, False, 100, [1200.0, 1440.0], [[1300.0, 1400.0]]))
        return next(line for line in console.export_text().splitlines() if line.strip().startswith("model"))

    elsewhere = model_line((np.array([4, 33]), np.array([454.68, 506.68]), 0.5))
    assert elsewhere.split(None, 1)[1] == "7:35-8:27 without the span prior, outside this window"
    here = model_line((np.array([4, 9]), np.array([1200.0 + 4 * 3.75, 1200.0 + 10 * 3.75]), 0.5))
    assert here == " model" + "  " + " " * 4 + "[====]  (without the span prior)"
    across = model_line((np.array([60, 63]), np.array([1425.0, 1460.0]), 0.5))  # runs past the window's end
    assert across == " model" + "  " + " " * 60 + "[==]  (without the span prior; 23:45-24:20 ends after this window)"
    before = model_line((np.array([60, 63]), np.array([454.68, 1207.0]), 0.5))  # mostly before the window
    assert before == " model" + "  " + "[]  (without the span prior; 7:35-20:07 starts before this window)"


@pytest.mark.parametrize("damage, said", [
    (lambda x: x[:-3], "its rows.npy holds 125x128 rows and features, not 128x128"),
    (lambda x: x[:, :64], "its rows.npy holds 128x64 rows and features, not 128x128"),
    (None, "its rows.npy is missing"),
    # rows.npy whole, videos.jsonl wrong
    ({"raw_at": -5}, "videos.jsonl places them in rows.npy with gaps or overlaps"),
    ({"raw_at": 10}, "videos.jsonl places them in rows.npy with gaps or overlaps"),
    ({"rows": 0}, "videos.jsonl places them in rows.npy with gaps or overlaps"),
    ({"raw_at": "x"}, 'videos.jsonl does not say where ("raw_at" and "rows" whole numbers)'),
    ({"raw_at": "64"}, 'videos.jsonl does not say where ("raw_at" and "rows" whole numbers)'),
    ({"rows": 1.5}, 'videos.jsonl does not say where ("raw_at" and "rows" whole numbers)'),
])
def test_a_damaged_rows_file_is_said_as_the_stores_damage(tmp_path, damage, said):
    """rows.npy cut short or of another width read long videos from the wrong rows (R@1 at IoU
    0.5 fell from 23.0 to 8.8 without a word) or failed in a matrix product."""
    from fsan_cli.core.errors import FsanError
    from fsan_cli.data.features import video_clips
    from fsan_cli.data.store import load_store, write_store
    from fsan_cli.data.synthetic import ensure_synthetic

    src = load_store(ensure_synthetic(tmp_path / "data", sizes={"train": 10, "val": 4, "test": 4}))
    long, rows, queries = laid_end_to_end(src, "test", 2)
    features = np.stack([video_clips(rows[v["video"]], src.clips) for v in long])
    where = tmp_path / "long" / "custom"
    write_store(where, {**src.manifest, "dataset": "custom"}, features, long, src.vocab, np.asarray(src.vectors),
                {"test": queries}, raw=rows)
    raw = np.load(where / "rows.npy")
    assert raw.shape == (128, 128) and load_store(where).raw.shape == (128, 128)
    if damage is None:
        (where / "rows.npy").unlink()
    elif isinstance(damage, dict):  # videos.jsonl places the second video's rows otherwise
        lines = [json.loads(line) for line in (where / "videos.jsonl").read_text().splitlines()]
        lines[1].update(damage)
        (where / "videos.jsonl").write_text("".join(json.dumps(v) + "\n" for v in lines))
    else:
        np.save(where / "rows.npy", damage(raw))
    with pytest.raises(FsanError) as err:
        load_store(where)
    assert str(err.value).startswith(f"the store at {where} keeps the rows of 2 long videos, and {said}")


def test_the_fix_said_for_long_videos_a_store_keeps_pooled_names_what_works():
    """A store keeps the rows of the videos longer than its own train videos; a checkpoint trained
    on shorter ones finds others long too, and preparing again would never keep those."""
    from types import SimpleNamespace

    from fsan_cli.data.store import Query

    def store(train_seconds):
        train = [Query(f"t{i}", "q", s, [[0.0, 1.0]]) for i, s in enumerate(train_seconds)]
        return SimpleNamespace(splits={"train": train} if train else {},
                               videos=[{"video": "mid", "duration": 800.0}, {"video": "far", "duration": 2000.0}])

    assert windows._keep_rows_fix(store([1155.0, 300.0]), [0], "run/best.pt") == (
        "the store keeps the rows only of videos longer than its own train videos (1155 s); to read these in "
        "windows, ground them from their original features file, not an fsan export of this store: fsan ground "
        "FILE --queries PAIRS.jsonl --checkpoint run/best.pt")
    again = "prepare the store again with this fsan to keep their rows"
    assert windows._keep_rows_fix(store([1155.0]), [0, 1]) == again  # 'far' it should have kept: an older fsan
    assert windows._keep_rows_fix(store([]), [0]) == again.replace("their", "its")  # no train split: it keeps all


@pytest.mark.parametrize("mark, pooled, said", [
    (None, False, False),  # a features file of one's own
    ("old export", None, False),  # an export of an older fsan: no mark; pooled where its rows are the model's N_v
    (32, True, False), (0, False, False),  # this fsan's exports: pooled clips, or the rows the store keeps
    (31, False, True), (-5, False, True), ("no", False, True), (True, False, True), (np.array([1, 2]), False, True),
])  # fmt: skip
def test_a_pooled_mark_is_believed_only_as_export_writes_it(tmp_path, capsys, mark, pooled, said):
    from fsan_cli.ground import grounding

    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as h5:
        ds = h5.create_dataset("features", data=np.zeros((32, 4), np.float32))
        h5.attrs["duration"] = 1419.0
        if isinstance(mark, str) and mark == "old export":
            h5.attrs["store"], h5.attrs["dataset"] = "data/custom", "custom"
        elif mark is not None:
            ds.attrs["pooled_clips"] = mark
    (video,) = grounding.read_videos(path, [None]).values()
    assert video.pooled is pooled
    old = isinstance(mark, str) and mark == "old export"
    assert grounding.pooled(video, 32) is bool(pooled or old) and grounding.pooled(video, 64) is bool(pooled)
    assert ("read as feature rows (remove the attribute, or export the video again)" in capsys.readouterr().err) is said


def test_pooled_clips_of_a_long_video_are_answered_from_them_and_said(capsys):
    """An export of a long video's pooled clips: answered from them (never cut into windows), and
    said, as evaluate says it; clips of another N_v are said too. Its rows a second are not checked."""
    p = oracle()  # reads 16 clips, trained on videos up to 100 s at 1 row a second
    clips = marked(16, (5, 8))
    answers, _ = windows.ground(p, [clips], ["long"], [400.0], np.array([0]), np.array([400.0]), ["walks"], 1,
                                pooled=[True])
    plain, _ = p.ground(np.stack([p.video_clips(clips, "long")]), np.array([0]), np.array([400.0]), ["walks"], 1)
    np.testing.assert_array_equal(answers.seconds, plain.seconds)  # the clips as a short video's, no windows
    err = " ".join(capsys.readouterr().err.split())
    assert ("'long' holds the video pooled to 16 clips (fsan export), and at 400 s it is longer than the model was "
            "trained on (100 s): answered from those clips, 25 s each (ground its original features file to read it "
            "in windows)") in err
    assert "check its duration" not in err and "the model reads" not in err
    windows.ground(p, [marked(8, (2, 4))], ["short"], [80.0], np.array([0]), np.array([80.0]), ["walks"], 1,
                   pooled=[True])
    err = " ".join(capsys.readouterr().err.split())
    assert err == ("Warning: 'short' holds the video pooled to 8 clips (fsan export), and the model reads 16: pooled "
                   "again (export it from a store prepared with --clips 16)")


def test_a_video_named_both_ways_is_read_and_said_once(tmp_path, capsys):
    """A plain query (the file's only video) and a JSON line naming that video: one video, its
    warnings said once."""
    from fsan_cli.ground import grounding
    from fsan_cli.ground.requests import Request

    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as h5:
        ds = h5.create_dataset("features", data=np.zeros((32, 4), np.float32))
        ds.attrs["pooled_clips"] = -1
        h5.attrs["video"], h5.attrs["duration"] = "vid", 60.0
    videos, keys = grounding.read_asked(path, [Request("1", "a horse"), Request("2", "a woman", "vid")])
    assert len(videos) == 1 and keys[0] == keys[1]
    assert capsys.readouterr().err.count("pooled_clips") == 1
