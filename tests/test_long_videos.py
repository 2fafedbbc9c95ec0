"""Videos longer than the model was trained on are read in windows at its own resolution
(fsan_cli/predict/windows.py): a moment straddling two windows is found, answers do not depend
on the batch or the windows' order, a video within the trained range is answered exactly as
before, and every path (ground, evaluate --checkpoint, ground | evaluate) agrees."""

from __future__ import annotations

import json

import h5py
import numpy as np
import torch
from typer.testing import CliRunner

from fsan_cli.app import app
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
    assert spans[0].tolist() == [0, 80] and spans[-1][1] == 600
    assert (np.diff(spans[:, 0]) <= 40).all() and (spans[:, 1] - spans[:, 0] == 80).all()
    assert windows.Windowing.of({}) is None and windows.Windowing.of({"durations": {"p90": "x"}}) is None


def test_a_moment_straddling_two_windows_is_found():
    p = oracle()
    # windows of 80 s every 40 s: [0, 80), [40, 120), [80, 160), ...; the moment 70-95 s crosses 80 s
    rows = marked(600, (70, 95))
    answers, found = windows.ground(p, [rows], ["long"], [600.0], np.array([0]), np.array([600.0]),
                                    ["person walks"], 5)
    top = answers.seconds[0][0]
    assert iou(top, (70, 95)) >= 0.7, top
    assert answers.windows[0][0][0] <= 70 and answers.windows[0][0][1] >= 95
    row = answers.row(0, "long", "person walks", 600.0, 5)
    assert row["window"] == [float(x) for x in answers.windows[0][0]] and len(row["windows"]) == 5
    assert found[0].moments[0].tolist() == top.tolist()
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


def test_a_long_video_through_ground_into_evaluate_scores_as_evaluate_checkpoint(tmp_path, monkeypatch):
    """Synthetic test videos laid end to end (five per long video, longer than any train video),
    prepared into a store that keeps their rows: `fsan ground --queries ... --json | fsan evaluate
    --predictions -` scores exactly as `fsan evaluate --checkpoint`, and the rows name windows."""
    from fsan_cli.core.checkpoint import load as load_checkpoint
    from fsan_cli.core.settings import load_settings
    from fsan_cli.data.store import Query, load_store, long_videos, write_store
    from fsan_cli.data.synthetic import ensure_synthetic
    from fsan_cli.train import loop as training

    src = load_store(ensure_synthetic(tmp_path / "data", sizes={"train": 40, "val": 10, "test": 10}))
    tiny = ["model.hidden=32", "model.layers=1", "model.heads=2", "model.align_dim=16", "train.epochs=1"]
    training.train(load_settings("synthetic", overrides=tiny), src, tmp_path / "run", torch.device("cpu"),
                   progress=False)
    ckpt = tmp_path / "run" / "best.pt"
    assert load_checkpoint(ckpt)["data"]["durations"]["max"] > 0
    index, test = src.video_index, src.split("test")
    names = list(dict.fromkeys(q.video for q in test))
    videos, rows, queries, raw = [], {}, [], {}
    for n, part in enumerate((names[:5], names[5:10])):
        name, offset, pieces = f"long{n}", 0.0, []
        for v in part:
            meta = src.videos[index[v]]
            pieces.append(np.asarray(src.features[index[v]]))  # its clips as rows
            queries += [Query(name, q.query, 0.0, [[a + offset, b + offset] for a, b in q.times])
                        for q in test if q.video == v]
            offset += float(meta["duration"])
        rows[name] = raw[name] = np.concatenate(pieces)
        videos.append({"video": name, "duration": offset, "rows": len(rows[name])})
        for q in queries:
            q.duration = offset if q.video == name else q.duration
    durations = {v["video"]: v["duration"] for v in videos}
    assert long_videos({"test": queries}, durations, list(durations)) == set(durations)
    assert min(durations.values()) > load_checkpoint(ckpt)["data"]["durations"]["max"]
    from fsan_cli.data.features import video_clips
    features = np.stack([video_clips(rows[v["video"]], src.clips) for v in videos])
    write_store(tmp_path / "long" / "custom", {**src.manifest, "dataset": "custom"}, features, videos,
                src.vocab, np.asarray(src.vectors), {"test": queries}, raw=raw)
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
