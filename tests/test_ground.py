"""`fsan ground` through the CLI on a tiny trained checkpoint: table, heatmap, JSON, stdin
batches, the feature-file layouts, and every bad input's message and exit code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fsan_cli.app import app
from fsan_cli.core import checkpoint
from fsan_cli.core.settings import load_settings
from fsan_cli.core.text import encode_texts, tokenize
from fsan_cli.data.store import load_store
from fsan_cli.data.synthetic import ensure_synthetic
from fsan_cli.evaluate.predictions import parse_predictions
from fsan_cli.ground.render import clock
from fsan_cli.predict import predictor as predict
from fsan_cli.predict import runtime
from fsan_cli.train import loop as training
from models.config import FSANConfig
from models.fsan import FSAN

TINY = [
    "model.hidden=32",
    "model.layers=1",
    "model.heads=2",
    "model.align_dim=16",
    "train.epochs=1",
]
# the map the segment scores read (P centred by default), and the span prior behind the answer
# and the model's own moments when the checkpoint uses one
ROW_KEYS = {"video", "query", "duration", "moments", "nms", "alignment_map", "score_map"}
PRIOR_KEYS = ROW_KEYS | {"span_prior", "model_moments"}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(folder holding runs/tiny/best.pt and synthetic/, the store, its first test query)."""
    root = tmp_path_factory.mktemp("ground")
    store = load_store(ensure_synthetic(root, sizes={"train": 40, "val": 10, "test": 10}))
    cfg = load_settings("synthetic", overrides=TINY)
    training.train(cfg, store, root / "runs" / "tiny", torch.device("cpu"), progress=False)
    return root, store, store.split("test")[0]


@pytest.fixture
def ckpt(trained) -> Path:
    return trained[0] / "runs" / "tiny" / "best.pt"


def clip_rows(store, video: str) -> np.ndarray:
    return np.asarray(store.features[store.video_index[video]])  # (32, 128): pools to itself


def write_video(path: Path, rows: np.ndarray, duration: float | None = None, **attrs) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=rows)
        if duration is not None:
            f.attrs["duration"] = duration
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


@pytest.fixture
def video(trained, tmp_path) -> Path:
    _, store, q = trained
    return write_video(tmp_path / "v.h5", clip_rows(store, q.video), q.duration, video=q.video)


def run(args: list[str], input: str | None = None, env: dict | None = None):
    """`fsan ground ARGS`, in fp32 unless ARGS choose: exact comparisons with evaluate need it
    (auto is bf16 on CPUs with AMX)."""
    env = {"COLUMNS": "100", **(env or {})}
    if "--precision" not in args:
        args = [*args, "--precision", "fp32"]
    return CliRunner().invoke(app, ["--device", "cpu", "ground", *args], input=input, env=env)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def reference(trained, ckpt: Path, queries, top_k: int = 5) -> list[dict]:
    """What `fsan evaluate --checkpoint` predicts for store queries (the training-time input),
    in fp32."""
    _, store, _ = trained
    return predict.Predictor.load(ckpt, torch.device("cpu"), "fp32").rows(store, queries, top_k)


def same_moments(a: list, b: list) -> None:
    assert [m[:2] for m in a] == [m[:2] for m in b]
    assert [m[2] for m in a] == pytest.approx([m[2] for m in b], abs=1e-4)


# ----------------------------------------------------------------------------- for people


def test_table_with_the_newest_checkpoint(trained, video, monkeypatch):
    root, _, q = trained
    monkeypatch.chdir(root)
    r = run([str(video), q.query])
    assert r.exit_code == 0, r.output
    assert "Checkpoint: runs/tiny/best.pt (the newest under runs/" in r.stderr
    lines = r.stdout.splitlines()
    assert (
        lines[0] == f"{q.query!r} in {q.video} ({q.duration:.1f} s, {clock(q.duration)})"
    )
    assert re.search(r"rank .*start \(s\) .*end \(s\) .*start .*end .*score", r.stdout)
    ref = reference(trained, Path("runs/tiny/best.pt"), [q])[0]["moments"]
    for rank, (s, e, score) in enumerate(ref, 1):
        # the video file's features are pooled here, the store's at prepare: scores agree to
        # about 1e-5, so the last printed digit may round either way
        row = f"│ {rank:<4} │ {s:9.2f} │ {e:7.2f} │ {clock(s):>5} │ {clock(e):>4} │ "
        found = [line for line in lines if line.startswith(row)]
        assert len(found) == 1, (row, lines)
        assert float(found[0][len(row):].strip(" │")) == pytest.approx(score, abs=1.5e-4)
    assert "\x1b[" not in r.stdout


def test_heatmap_is_plain_text_when_not_a_terminal(trained, video, ckpt):
    _, _, q = trained
    r = run([str(video), q.query, "--checkpoint", str(ckpt)])
    assert r.exit_code == 0, r.output
    assert "\x1b[" not in r.stdout and "█" not in r.stdout
    tokens = tokenize(q.query)
    rows = [line for line in r.stdout.splitlines() if re.match(r"^ *\S+ \|[ .:\-=+*#%@]+\|$", line)]
    assert [row.split("|")[0].strip() for row in rows] == tokens
    assert {len(row) for row in rows} == {len(rows[0])}
    marker = next(line for line in r.stdout.splitlines() if line.strip().startswith("top 1"))
    assert re.fullmatch(r" *top 1 +(\^|\[=*\])", marker)
    axis = r.stdout.splitlines()[-1]
    assert axis.split()[0] == "0:00" and axis.split()[-1] == clock(q.duration)


def test_heatmap_in_colour_on_a_terminal_unless_no_color(trained, video, ckpt):
    _, _, q = trained
    r = run([str(video), q.query, "--checkpoint", str(ckpt)], env={"FORCE_COLOR": "1"})
    assert r.exit_code == 0, r.output
    assert "\x1b[" in r.stdout and "█" in r.stdout
    r = run(
        [str(video), q.query, "--checkpoint", str(ckpt)], env={"FORCE_COLOR": "1", "NO_COLOR": "1"}
    )
    assert "█" not in r.stdout and "\x1b[38;2" not in r.stdout
    assert "shades ' .:-=+*#%@'" in r.stdout


def test_unknown_words_are_marked_and_warned(trained, video, ckpt):
    _, _, q = trained
    r = run([str(video), q.query + " zorbly", "--checkpoint", str(ckpt)])
    assert r.exit_code == 0, r.output
    assert "zorbly* |" in r.stdout and "not in the vocabulary, read as <unk>" in r.stdout
    assert "Warning: not in the model's vocabulary, read as <unk>: zorbly" in r.stderr


# ----------------------------------------------------------------------------- for pipelines


def test_json_schema_and_training_time_input(trained, video, ckpt):
    _, _, q = trained
    r = run([str(video), q.query, "--checkpoint", str(ckpt), "--json", "--top-k", "3"])
    assert r.exit_code == 0, r.output
    (row,) = json_lines(r.stdout)
    assert ROW_KEYS <= set(row) <= PRIOR_KEYS
    assert (row["video"], row["query"], row["duration"]) == (q.video, q.query, q.duration)
    assert len(row["moments"]) == 3
    assert all(0 <= s < e <= q.duration for s, e, _ in row["moments"])
    assert [m[2] for m in row["moments"]] == sorted((m[2] for m in row["moments"]), reverse=True)
    amap = row["alignment_map"]
    assert amap["tokens"] == tokenize(q.query) and amap["clips"] == 32
    values = np.array(amap["values"])
    assert values.shape == (len(amap["tokens"]), 32) and np.abs(values).max() <= 1
    assert np.array_equal(values, values.round(4))
    parse_predictions(r.stdout.splitlines(), "stdout")  # the predictions contract
    same_moments(row["moments"], reference(trained, ckpt, [q], top_k=3)[0]["moments"])


def test_stdin_batch_equals_one_by_one(trained, video, ckpt):
    _, store, _ = trained
    texts = [
        "a person opens the door",
        "the man cuts the bread slowly again then",
        "someone drinks",
        "a girl reads the zorbly book",
    ]
    r = run(
        [str(video), "-", "--checkpoint", str(ckpt), "--json"],
        input="\n".join(texts[:2]) + "\n\n  \n" + "\n".join(texts[2:]),
    )
    assert r.exit_code == 0, r.output
    batch = json_lines(r.stdout)
    assert [row["query"] for row in batch] == texts
    for text, row in zip(texts, batch, strict=True):
        one = run([str(video), text, "--checkpoint", str(ckpt), "--json"])
        (single,) = json_lines(one.stdout)
        same_moments(row["moments"], single["moments"])
        assert np.allclose(
            row["alignment_map"]["values"], single["alignment_map"]["values"], atol=2e-4
        )
        assert row["alignment_map"]["tokens"] == single["alignment_map"]["tokens"]


def test_bf16_close_to_fp32(trained, video, ckpt):
    """bf16 arithmetic (the default on CUDA and AMX CPUs) keeps the alignment map within bf16's
    rounding of fp32 and ranks the same moments first for nearly every query."""
    _, store, _ = trained
    texts = "\n".join(q.query for q in store.split("test")) + "\n"
    rows = {}
    for precision in ("fp32", "bf16"):
        r = run([str(video), "-", "--checkpoint", str(ckpt), "--json", "--precision", precision], input=texts)
        assert r.exit_code == 0, r.output
        assert f"{precision})" in r.stderr  # the log line says which arithmetic ran
        rows[precision] = json_lines(r.stdout)
    maps = [np.asarray(r["alignment_map"]["values"]) for r in rows["bf16"]]
    ref = [np.asarray(r["alignment_map"]["values"]) for r in rows["fp32"]]
    assert max(np.abs(a - b).max() for a, b in zip(maps, ref, strict=True)) < 0.05
    assert any(not np.array_equal(a, b) for a, b in zip(maps, ref, strict=True))  # bf16 did run
    top1 = [a["moments"][0][:2] == b["moments"][0][:2] for a, b in zip(rows["bf16"], rows["fp32"], strict=True)]
    assert sum(top1) >= 0.8 * len(top1)


def test_cpu_workers_match_one_thread(trained, ckpt, monkeypatch):
    """Batches that run side by side on one thread each (the CPU path for many queries) give
    bit-identical fp32 results to the same batches one after another, and leave the thread
    count as it was."""
    _, store, _ = trained
    texts = [q.query for q in store.split("test") * 3]
    predictor = predict.Predictor.load(ckpt, torch.device("cpu"), "fp32")
    clips = clip_rows(store, store.split("test")[0].video)
    monkeypatch.setattr(predict, "CPU_BATCH", 4)  # several batches from 30 queries
    pools = []

    class Recording(predict.ThreadPoolExecutor):
        def __init__(self, workers):
            pools.append(workers)
            super().__init__(workers)

    monkeypatch.setattr(predict, "ThreadPoolExecutor", Recording)
    before = torch.get_num_threads()
    try:
        results = {}
        for threads in (1, 3):
            torch.set_num_threads(threads)
            n = len(texts)
            _, results[threads] = predictor.ground(clips[None], np.zeros(n, np.int64),
                                                   np.full(n, 60.0), texts, top_k=3)
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert pools == [3]  # one thread: no pool; three: three workers
    for a, b in zip(results[1], results[3], strict=True):
        assert a.query == b.query and a.tokens == b.tokens
        assert np.array_equal(a.segments, b.segments) and np.array_equal(a.scores, b.scores)
        assert np.array_equal(a.alignment_map, b.alignment_map)


@pytest.mark.parametrize(("fast", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_follows_the_hardware(monkeypatch, fast, expected):
    monkeypatch.setattr(runtime, "fast_bf16", lambda device: fast)
    assert runtime.resolve_precision("auto", torch.device("cpu")) == expected
    assert runtime.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert runtime.resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_ground_then_evaluate_composes(trained, video, ckpt):
    root, store, q = trained
    queries = [x for x in store.split("test") if x.video == q.video]
    r = run(
        [str(video), "-", "--checkpoint", str(ckpt), "--json"],
        input="\n".join(x.query for x in queries),
    )
    assert r.exit_code == 0, r.output
    e = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--dataset",
            "synthetic",
            "--data-dir",
            str(root),
            "--predictions",
            "-",
            "--json",
        ],
        input=r.stdout,
    )
    assert e.exit_code == 0, e.output
    assert json.loads(e.stdout)["predicted"] == len(queries)


# ----------------------------------------------------------------------------- video files


def test_official_layouts_and_video_id(trained, tmp_path, ckpt):
    _, store, q = trained
    other = store.split("test")[-1].video
    want = reference(trained, ckpt, [q])[0]["moments"]
    anet = tmp_path / "anet.h5"
    with h5py.File(anet, "w") as f:  # a group per video holding c3d_features
        for vid in (q.video, other):
            f.create_group(f"v_{vid}").create_dataset("c3d_features", data=clip_rows(store, vid))
            f[f"v_{vid}"].attrs["duration"] = q.duration
    for vid in (f"v_{q.video}", q.video):  # with or without the v_ prefix
        r = run([str(anet), q.query, "--checkpoint", str(ckpt), "--json", "--video-id", vid])
        assert r.exit_code == 0, r.output
        (row,) = json_lines(r.stdout)
        assert row["video"] == f"v_{q.video}"
        same_moments(row["moments"], want)
    single = tmp_path / "didemo.h5"
    with h5py.File(single, "w") as f:  # one (T, D) dataset, no duration: --duration gives it
        f.create_dataset(q.video, data=clip_rows(store, q.video))
    r = run(
        [str(single), q.query, "--checkpoint", str(ckpt), "--json", "--duration", str(q.duration)]
    )
    assert r.exit_code == 0, r.output
    (row,) = json_lines(r.stdout)
    assert row["video"] == q.video
    same_moments(row["moments"], want)


def test_pooling_and_pca_come_from_the_checkpoint(trained, tmp_path, ckpt):
    _, store, q = trained
    want = reference(trained, ckpt, [q])[0]["moments"]
    rows = clip_rows(store, q.video)
    long = write_video(tmp_path / "long.h5", np.repeat(rows, 3, axis=0), q.duration)  # 96 rows
    c = checkpoint.load(ckpt)
    dim = rows.shape[1]
    c["data"]["pca"] = {  # tensors: a checkpoint holds no numpy arrays (weights_only)
        "mean": torch.full((2 * dim,), 0.5),
        "components": torch.eye(dim, 2 * dim),
    }
    checkpoint.save(c, tmp_path / "pca.pt")
    wide = np.concatenate([rows + 0.5, np.random.default_rng(0).normal(size=rows.shape)], 1)
    wide_file = write_video(tmp_path / "wide.h5", wide.astype(np.float32), q.duration)
    for path, model in ((long, ckpt), (wide_file, tmp_path / "pca.pt")):
        r = run([str(path), q.query, "--checkpoint", str(model), "--json"])
        assert r.exit_code == 0, r.output
        same_moments(json_lines(r.stdout)[0]["moments"], want)
    r = run([str(long), q.query, "--checkpoint", str(tmp_path / "pca.pt")])
    assert r.exit_code == 1
    assert r.stderr.endswith(
        "Error: video 'long' has 128-d features, the checkpoint expects 256-d, projected by its "
        "PCA to 128. Use features from the extractor the model was trained on, or another "
        "--checkpoint.\n"
    )


def test_fast_builder_equals_an_initialised_model(trained, ckpt):
    """checkpoint.build_model skips the random initialisation and assigns the file's weights:
    the same network, buffers and answers as one initialised first and then loaded."""
    fast, c = checkpoint.load_model(ckpt, torch.device("cpu"))
    torch.manual_seed(0)
    slow = FSAN(FSANConfig.from_dict(c["model_config"]), c["state_dict"]["embedding.weight"].clone())
    slow.load_state_dict(c["state_dict"])
    slow.eval()
    a, b = fast.state_dict(), slow.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fb, sb = dict(fast.named_buffers()), dict(slow.named_buffers())  # non-persistent ones too
    assert fb.keys() == sb.keys() and all(torch.equal(fb[k], sb[k]) for k in fb)
    assert not fast.training and not fast.embedding.weight.requires_grad
    _, store, q = trained
    video = torch.from_numpy(clip_rows(store, q.video))[None]
    word_to_id = {w: i for i, w in enumerate(c["vocab"])}
    tokens = torch.from_numpy(encode_texts([q.query], word_to_id, fast.cfg.max_tokens))
    with torch.inference_mode():
        x, y = fast(video, tokens), slow(video, tokens)
    assert torch.equal(x.segment_scores, y.segment_scores)
    assert torch.equal(x.alignment_map, y.alignment_map)


# ----------------------------------------------------------------------------- bad input


def multi(path: Path, rows) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("a", data=rows)
        f.create_dataset("b", data=rows)
    return path


@pytest.mark.parametrize("case, query, message", [
    ("ok", "", "Error: query 1 ('') has no words. Pass a sentence"),
    ("ok", "  \t ", "Error: query 1 ('  \\t ') has no words."),
    ("ok", "blorft plugh!", "Error: query 1 ('blorft plugh!') has no word the model knows "
                            "(unknown: blorft, plugh). Rephrase it with common words; the checkpoint knows"),
    ("dim", "a person opens the door", "Error: video 'v' has 64-d features, the checkpoint expects 128-d. "
                                       "Use features from the extractor the model was trained on"),
    ("no_duration", "a person opens the door", "has no duration attribute, nor does the prepared "),
    ("empty", "a person opens the door", "has no feature rows (T = 0). Extract features for at least"),
    ("text", "a person opens the door", "is not an HDF5 file. Pass an HDF5 file with a (T, D) dataset"),
    ("missing", "a person opens the door", "does not exist. Pass the path of a video file or of an HDF5 feature file."),
    ("multi", "a person opens the door", "holds 2 videos. Pass --video-id to pick one, e.g. --video-id a."),
    ("3d", "a person opens the door", "holds float32 values of shape (2, 3, 4), not a (T, D) matrix"),
    ("two_durations", "a person opens the door", "v.h5:/ is [1307.25, 5.0], not a number of seconds. Fix the"),
    ("true_duration", "a person opens the door", "v.h5:/ is True, not a number of seconds. Fix the"),
])  # fmt: skip
def test_bad_input_is_one_clear_error(trained, tmp_path, ckpt, case, query, message):
    rows = clip_rows(trained[1], trained[2].video)
    path = tmp_path / "v.h5"
    if case == "ok":
        write_video(path, rows, 10.0)
    elif case == "dim":
        write_video(path, rows[:, :64], 10.0)
    elif case == "no_duration":
        write_video(path, rows)
    elif case == "empty":
        write_video(path, rows[:0], 10.0)
    elif case == "text":
        path.write_text("not hdf5\n", encoding="utf-8")
    elif case == "multi":
        multi(path, rows)
    elif case == "3d":
        write_video(path, np.zeros((2, 3, 4), np.float32), 10.0)
    elif case == "two_durations":  # one of them would be taken without a word
        write_video(path, rows, np.array([1307.25, 5.0]))
    elif case == "true_duration":  # float(True) would be 1 s
        write_video(path, rows, True)
    r = run([str(path), query, "--checkpoint", str(ckpt)])
    assert (r.exit_code, r.stdout) == (1, ""), r.output
    assert message in r.stderr
    assert r.stderr.count("Error:") == 1 and "Traceback" not in r.stderr


def test_bad_stdin_names_the_line(video, ckpt):
    r = run(
        [str(video), "-", "--checkpoint", str(ckpt), "--json"],
        input="a person opens the door\n\nflurb\n",
    )
    assert (r.exit_code, r.stdout) == (1, "")
    assert "Error: stdin line 3 ('flurb') has no word the model knows (unknown: flurb)." in r.stderr
    r = run([str(video), "-", "--checkpoint", str(ckpt)], input="\n \n")
    assert (
        r.stderr
        == "Error: stdin holds no queries. Pipe one query per line into `fsan ground VIDEO -`.\n"
    )


def test_checkpoint_errors(video, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run([str(video), "a door"])
    assert (r.exit_code, r.stderr) == (
        1,
        "Error: no checkpoint found under runs/. Train one with `fsan train`, or pass --checkpoint PATH.\n",
    )
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = run([str(video), "a door", "--checkpoint", str(bad)])
    assert r.exit_code == 1 and "cannot be read" in r.stderr


def test_video_id_not_in_the_file(trained, tmp_path, ckpt):
    path = multi(tmp_path / "m.h5", clip_rows(trained[1], trained[2].video))
    r = run([str(path), "a door", "--checkpoint", str(ckpt), "--video-id", "zz"])
    assert r.exit_code == 1
    assert r.stderr.endswith(
        f"Error: video 'zz' is not in {path} (2 videos there). "
        "Pass --video-id with one of its keys, e.g. a, b.\n"
    )


def test_duration_must_be_positive(video, ckpt):
    r = run([str(video), "a door", "--checkpoint", str(ckpt), "--duration", "0"])
    assert (r.exit_code, r.stderr) == (
        1,
        "Error: --duration must be positive, got 0. Pass the video's length in seconds.\n",
    )


# ----------------------------------------------------------------------------- --plot


def test_plot_without_matplotlib_is_a_clear_error(video, ckpt, monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real(name, *a),
    )
    r = run([str(video), "a door", "--checkpoint", str(ckpt), "--plot", str(tmp_path / "f.png")])
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr == (
        "Error: --plot needs matplotlib, which is not installed. Install the plot extra: "
        "pip install 'fsan[plot]' (or pip install matplotlib).\n"
    )


def test_plot_writes_a_png(trained, video, ckpt, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "fig.png"
    r = run(
        [
            str(video),
            trained[2].query,
            "a person opens the door",
            "--checkpoint",
            str(ckpt),
            "--json",
            "--plot",
            str(out),
        ]
    )
    assert r.exit_code == 0, r.output
    assert len(json_lines(r.stdout)) == 2
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_is_readable_at_its_size_with_one_colour_scale_and_a_legend(trained, video, ckpt, tmp_path,
                                                                         monkeypatch):
    """Two queries stacked, 1440 px wide (9.6 in at 150 dpi), no text under 10 pt, one colorbar
    for both maps, and a legend naming the boxes: the answer, and the ground truth a query line
    brought as "times"."""
    pytest.importorskip("matplotlib")
    import matplotlib.image
    import matplotlib.text

    from fsan_cli.ground import render

    figures, real = [], render.save_plot
    monkeypatch.setattr(render, "save_plot", lambda *a: figures.append(real(*a)))
    q = trained[2]
    lines = [{"query": q.query, "times": q.times[0]}, {"query": "a person opens the door"}]
    out = tmp_path / "fig.png"
    r = run([str(video), "-", "--checkpoint", str(ckpt), "--plot", str(out)],
            input="".join(json.dumps(line) + "\n" for line in lines))
    assert r.exit_code == 0, r.output
    (fig,) = figures
    height, width, _ = matplotlib.image.imread(out).shape
    assert (width, height) == (1440, round(fig.get_size_inches()[1] * 150))
    assert 500 <= height <= 1100  # two short queries
    assert [ax.get_label() for ax in fig.axes].count("<colorbar>") == 1
    assert len([ax for ax in fig.axes if ax.images]) == 2
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[0] == "the answer (top 1)" and "ground truth (the query's times)" in labels
    assert min(t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_text()) >= 10


@pytest.mark.parametrize("how", ["--json", "--top-k=5"])
def test_a_closed_stdout_ends_quietly(video, ckpt, tmp_path, how):
    """`fsan ground ... --json | head -1` (and the table): no error line, exit 141 as a tool
    killed by SIGPIPE."""
    import subprocess
    import sys

    queries = tmp_path / "q.txt"
    queries.write_text("".join(f"a person opens the door {i}\n" for i in range(2000)))
    script = (f'"{sys.executable}" -m fsan_cli ground "{video}" - {how} --checkpoint "{ckpt}" '
              f'< "{queries}" 2> "{tmp_path / "err"}" | head -1 > /dev/null; echo ${{PIPESTATUS[0]}}')
    status = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    stderr = (tmp_path / "err").read_text()
    assert "Error" not in stderr and "Exception" not in stderr, stderr
    assert status.stdout.strip() == "141"
