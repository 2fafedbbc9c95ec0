"""`fsan ground` over many (video, query) pairs: JSON lines in and out with their own fields,
batched across the videos of one official feature file, durations from the prepared store, and
piped into `fsan evaluate` with the same metrics as `fsan evaluate --checkpoint` (ActivityNet-
style and DiDeMo-style data)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fsan_cli.app import app
from fsan_cli.core.settings import load_settings
from fsan_cli.data.store import Query, load_store, write_store
from fsan_cli.data.synthetic import ensure_synthetic
from fsan_cli.train import loop as training

TINY = ["model.hidden=32", "model.layers=1", "model.heads=2", "model.align_dim=16", "train.epochs=1"]
SIZES = {"train": 40, "val": 10, "test": 12}


def official_file(path: Path, store, group: bool = True) -> Path:
    """The store's videos in an official layout with no durations: a group per video holding
    `c3d_features` (ActivityNet), or a (T, D) dataset per video (DiDeMo)."""
    with h5py.File(path, "w") as h5:
        for v in store.videos:
            rows = np.asarray(store.features[store.video_index[v["video"]]])
            if group:
                h5.create_group(v["video"]).create_dataset("c3d_features", data=rows)
            else:
                h5.create_dataset(v["video"], data=rows)
    return path


@pytest.fixture(scope="module")
def anet(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    store = load_store(ensure_synthetic(root / "data", sizes=SIZES))
    training.train(load_settings("synthetic", overrides=TINY), store, root / "run", torch.device("cpu"),
                   progress=False)
    return {"root": root, "store": store, "ckpt": root / "run" / "best.pt",
            "h5": official_file(root / "feats.hdf5", store)}


@pytest.fixture(scope="module")
def didemo(tmp_path_factory):
    """A DiDeMo-style store (N_v 6, 30 s videos, annotation ids and chunk pairs) built from the
    synthetic generator's videos, and a tiny model trained on it."""
    root = tmp_path_factory.mktemp("didemo")
    src = load_store(ensure_synthetic(root / "src", sizes=SIZES, clips=6))
    ids = iter(range(1, 10_000))

    def as_didemo(q: Query) -> Query:
        s, e = (t * 30.0 / q.duration for t in q.times[0])
        chunk = [min(5, int(s // 5)), max(min(5, math.ceil(e / 5) - 1), min(5, int(s // 5)))]
        times = [[5.0 * chunk[0], 5.0 * (chunk[1] + 1)]]
        return Query(q.video, q.query, 30.0, times, {"annotation_id": next(ids), "chunks": [chunk] * 3})

    splits = {name: [as_didemo(q) for q in qs] for name, qs in src.splits.items()}
    videos = [{**v, "duration": 30.0} for v in src.videos]
    write_store(root / "data" / "didemo", {**src.manifest, "dataset": "didemo", "clips": 6},
                np.asarray(src.features), videos, src.vocab, np.asarray(src.vectors), splits)
    store = load_store(root / "data" / "didemo")
    cfg = load_settings("didemo", overrides=TINY)
    training.train(cfg, store, root / "run", torch.device("cpu"), progress=False)
    return {"root": root, "store": store, "ckpt": root / "run" / "best.pt",
            "h5": official_file(root / "fc7.h5", store, group=False)}


def fsan(*args: str, input: str | None = None, env: dict | None = None):
    return CliRunner().invoke(app, ["--device", "cpu", *args], input=input, env=env or {})


def lines(queries, **extra_of) -> str:
    return "".join(json.dumps({"video": q.video, "query": q.query,
                               **{k: f(q) for k, f in extra_of.items()}}) + "\n" for q in queries)


@pytest.mark.parametrize("world", ["anet", "didemo"])
def test_ground_pairs_into_evaluate_equals_evaluate_checkpoint(world, request):
    """All test queries of the store, grounded as (video, query) pairs against one official
    features file without durations (the store knows them), score exactly as the checkpoint
    does through `fsan evaluate --checkpoint`."""
    w = request.getfixturevalue(world)
    dataset = "synthetic" if world == "anet" else "didemo"
    queries = w["store"].split("test")
    pairs = w["root"] / "pairs.jsonl"
    extra = {"annotation_id": lambda q: q.extra["annotation_id"]} if world == "didemo" else {}
    pairs.write_text(lines(queries, **extra))
    env = {"FSAN_DATA_DIR": str(w["root"] / "data")}
    grounded = fsan("ground", str(w["h5"]), "--queries", str(pairs), "--checkpoint", str(w["ckpt"]),
                    "--json", "--precision", "fp32", "--dataset", dataset, env=env)
    assert grounded.exit_code == 0, grounded.stderr
    rows = [json.loads(line) for line in grounded.stdout.splitlines()]
    assert len(rows) == len(queries)
    assert [r["duration"] for r in rows] == [q.duration for q in queries]
    piped = fsan("evaluate", "--dataset", dataset, "--predictions", "-", "--json",
                 input=grounded.stdout, env=env)
    direct = fsan("evaluate", "--dataset", dataset, "--checkpoint", str(w["ckpt"]), "--json", env=env)
    assert piped.exit_code == direct.exit_code == 0, piped.stderr + direct.stderr
    assert json.loads(piped.stdout) == json.loads(direct.stdout)
    assert f"Matched {len(queries)} of {len(queries)} prediction rows" in piped.stderr


def test_json_lines_keep_their_own_fields_in_order(anet):
    store = anet["store"]
    queries = list({q.video: q for q in store.split("test")}.values())[:4]  # 4 videos
    ids = {id(q): f"id-{i}" for i, q in enumerate(queries)}
    text = lines(queries, annotation_id=lambda q: ids[id(q)], mine=lambda q: {"n": 1})
    text = text.replace('"query"', '"duration": 12.5, "query"', 1)  # the first line's own seconds
    r = fsan("ground", str(anet["h5"]), "-", "--checkpoint", str(anet["ckpt"]), "--json",
             "--dataset", "synthetic", input=text,
             env={"FSAN_DATA_DIR": str(anet["root"] / "data")})
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["video"], x["query"], x["annotation_id"], x["mine"]) for x in rows] == [
        (q.video, q.query, ids[id(q)], {"n": 1}) for q in queries]
    assert rows[0]["duration"] == 12.5
    durations = {v["video"]: v["duration"] for v in store.videos}
    assert [x["duration"] for x in rows[1:]] == [durations[q.video] for q in queries[1:]]


def test_a_query_gets_the_same_answer_alone_and_among_other_videos(anet):
    queries = anet["store"].split("test")
    env = {"FSAN_DATA_DIR": str(anet["root"] / "data")}
    common = ["--checkpoint", str(anet["ckpt"]), "--json", "--precision", "fp32"]
    together = fsan("ground", str(anet["h5"]), "-", *common, input=lines(queries), env=env)
    alone = fsan("ground", str(anet["h5"]), queries[5].query, "--video-id", queries[5].video, *common,
                 env=env)
    assert together.exit_code == alone.exit_code == 0
    assert json.loads(together.stdout.splitlines()[5]) == json.loads(alone.stdout)


@pytest.mark.parametrize("text, message", [
    ('{"video": "VID", "query": "a person"}\n{"video": "VID", oops}\n',
     "Error: stdin line 2 is not valid JSON"),
    ('{"video": "VID"}\n', 'Error: stdin line 1 has no "query" string. Write e.g. {"video": "v_x"'),
    ('{"video": null, "query": "a person"}\n', 'Error: stdin line 1 has "video": null.'),
    ('{"video": "nope", "query": "a person"}\n', "Error: video 'nope' is not in "),
    ('{"video": "VID", "query": "a person", "annotation_id": 3}\n'
     '{"video": "VID", "query": "the door", "annotation_id": 3}\n',
     "Error: stdin line 2 repeats annotation_id 3 of stdin line 1. Give each query its own id."),
    ('{"video": "VID", "query": "a person", "moments": []}\n',
     "Error: stdin line 1 has the field 'moments', which fsan writes."),
    ('{"video": "VID", "query": "a person", "duration": -4}\n', 'Error: stdin line 1 has "duration": -4.'),
    ('{"video": "VID", "query": ["a", "person"]}\n', 'Error: stdin line 1 has no "query" string.'),
    ('{"video": "VID", "query": "a person", "duration": true}\n', 'Error: stdin line 1 has "duration": true.'),
    ('{"video": "VID", "query": "a person", "duration": "12"}\n', 'Error: stdin line 1 has "duration": "12".'),
    ('{"video": false, "query": "a person"}\n', 'Error: stdin line 1 has "video": false, not an id.'),
])  # fmt: skip
def test_bad_lines_are_one_error_and_no_output(anet, text, message):
    video = anet["store"].videos[0]["video"]
    r = fsan("ground", str(anet["h5"]), "-", "--checkpoint", str(anet["ckpt"]), "--json",
             input=text.replace("VID", video))
    assert (r.exit_code, r.stdout) == (1, "")
    assert message in r.stderr and r.stderr.count("Error:") == 1, r.stderr


def test_invalid_utf8_on_stdin_is_named(anet, tmp_path):
    pairs = tmp_path / "p.jsonl"
    pairs.write_bytes(b'{"video": "x", "query": "a person"}\n{"query": "caf\xe9"}\n')
    r = fsan("ground", str(anet["h5"]), "--queries", str(pairs), "--checkpoint", str(anet["ckpt"]))
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr.endswith(f"Error: {pairs} line 2 is not UTF-8 text. Convert the input to UTF-8.\n")


def test_duration_flag_is_refused_for_several_videos(anet):
    queries = anet["store"].split("test")
    r = fsan("ground", str(anet["h5"]), "-", "--checkpoint", str(anet["ckpt"]), "--duration", "9",
             input=lines(queries[:3]))
    assert (r.exit_code, r.stdout) == (1, "")
    assert "--duration gives one length, and the queries ask about" in r.stderr


def test_official_file_without_a_store_asks_for_the_duration(anet, tmp_path):
    q = anet["store"].split("test")[0]
    r = fsan("ground", str(anet["h5"]), q.query, "--video-id", q.video, "--checkpoint",
             str(anet["ckpt"]), "--data-dir", str(tmp_path))
    assert (r.exit_code, r.stdout) == (1, "")
    assert "has no duration attribute, nor does the prepared store" in r.stderr
    assert "Pass --duration SECONDS (the video's length), or --dataset and --data-dir" in r.stderr


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_an_answer_does_not_depend_on_its_batch(precision):
    """Under bf16 too (the default on CUDA and AMX CPUs), a query grounded alone and inside a
    batch of other queries, of other lengths and other videos, gets the same moments, scores
    and map, bit for bit. (A d-128 model: at this size bf16 answered 12 of 40 queries
    differently alone and in a batch before batches had fixed shapes.)"""
    from fsan_cli.predict.predictor import Predictor
    from models.config import FSANConfig
    from models.fsan import FSAN

    torch.manual_seed(0)
    cfg = FSANConfig(word_dim=50, feature_dim=64, clips=32, hidden=128, layers=2, heads=4, align_dim=128)
    vocab = ["<pad>", "<unk>", *(f"w{i}" for i in range(60))]
    model = FSAN(cfg, torch.randn(len(vocab), 50)).eval()
    predictor = Predictor(model, vocab, {"clips": 32, "feature_dim": 64}, 0.5, torch.device("cpu"), precision)
    rng = np.random.default_rng(0)
    clips = rng.normal(size=(3, 32, 64)).astype(np.float32)
    texts = [" ".join(f"w{j}" for j in rng.integers(0, 60, int(rng.integers(3, 20)))) for _ in range(40)]
    index, seconds = rng.integers(0, 3, 40), np.full(40, 100.0)
    _, together = predictor.ground(clips, index, seconds, texts, 5)
    for i in range(40):
        _, (alone,) = predictor.ground(clips, index[i : i + 1], seconds[i : i + 1], texts[i : i + 1], 5)
        assert np.array_equal(alone.segments, together[i].segments), i
        assert np.array_equal(alone.scores, together[i].scores), i
        assert np.array_equal(alone.alignment_map, together[i].alignment_map), i


def test_a_video_too_large_for_the_free_ram_is_one_error(anet, monkeypatch):
    from fsan_cli.core import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)
    q = anet["store"].split("test")[0]
    r = fsan("ground", str(anet["h5"]), q.query, "--video-id", q.video, "--checkpoint", str(anet["ckpt"]),
             "--duration", "30")
    assert (r.exit_code, r.stdout) == (1, "")
    assert f"Error: video '{q.video}' in {anet['h5']}:/{q.video}/c3d_features holds" in r.stderr
    assert "of RAM needed, 0.0 MB free. Ground it on a machine with more free RAM" in r.stderr
    assert r.stderr.count("Error:") == 1


def test_a_checkpoint_of_another_dataset_is_said(anet, tmp_path, capsys):
    """Same N_v and feature dim, another dataset: scored, with a warning saying so."""
    from fsan_cli.predict.predictor import Predictor

    src = anet["store"]
    write_store(tmp_path / "custom", {**src.manifest, "dataset": "custom"}, np.asarray(src.features),
                src.videos, src.vocab, np.asarray(src.vectors), src.splits)
    other = load_store(tmp_path / "custom")
    rows = Predictor.load(anet["ckpt"], torch.device("cpu")).rows(other, other.split("test"), 5)
    assert len(rows) == len(other.split("test"))
    assert f"Warning: {anet['ckpt']} was trained on synthetic; these queries are of custom" in capsys.readouterr().err


def test_a_byte_order_mark_and_crlf_lines_are_read(anet, tmp_path):
    q = anet["store"].split("test")[0]
    pairs = tmp_path / "bom.jsonl"
    pairs.write_bytes(b"\xef\xbb\xbf" + (json.dumps({"video": q.video, "query": q.query}) + "\r\n").encode())
    r = fsan("ground", str(anet["h5"]), "--queries", str(pairs), "--checkpoint", str(anet["ckpt"]), "--json",
             "--duration", "30")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["video"] == q.video


def test_a_single_video_file_refuses_other_videos(anet, tmp_path):
    store, (a, b) = anet["store"], anet["store"].videos[:2]
    path = tmp_path / "one.h5"
    with h5py.File(path, "w") as h5:
        h5["features"] = np.asarray(store.features[store.video_index[a["video"]]])
        h5.attrs["video"], h5.attrs["duration"] = a["video"], a["duration"]
    common = ["--checkpoint", str(anet["ckpt"]), "--json"]
    r = fsan("ground", str(path), "a person", "--video-id", b["video"], *common)
    assert (r.exit_code, r.stdout) == (1, "")
    assert f"Error: video '{b['video']}' is not in {path}: it holds the one video '{a['video']}'" in r.stderr
    text = "".join(json.dumps({"video": v, "query": "a person"}) + "\n" for v in ("x1", "x2"))
    r = fsan("ground", str(path), "-", *common, input=text)
    assert (r.exit_code, r.stdout) == (1, "")
    assert f"Error: {path} holds one video, and the queries name 2 (x1, x2)" in r.stderr


def test_an_unknown_video_id_is_refused_even_when_lines_name_theirs(anet):
    q = anet["store"].split("test")[0]
    r = fsan("ground", str(anet["h5"]), "-", "--video-id", "nope", "--checkpoint", str(anet["ckpt"]),
             input=json.dumps({"video": q.video, "query": q.query}) + "\n")
    assert (r.exit_code, r.stdout) == (1, "")
    assert "Error: video 'nope' is not in" in r.stderr


def test_an_infinite_duration_is_refused_at_once(anet):
    r = fsan("ground", str(anet["h5"]), "a person", "--duration", "inf", "--checkpoint", str(anet["ckpt"]))
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", "Error: --duration must be positive, got inf. "
                                                        "Pass the video's length in seconds.\n")


@pytest.mark.parametrize("name, message", [
    ("fig.txt", "has no image file type matplotlib writes"),
    ("INPUT", "is a file this command reads"),
])
def test_plot_is_checked_before_any_work(anet, tmp_path, name, message):
    q = anet["store"].split("test")[0]
    pairs = tmp_path / "pairs.pdf"  # an input whose name a figure could take
    pairs.write_text(json.dumps({"video": q.video, "query": q.query}) + "\n")
    plot = pairs if name == "INPUT" else tmp_path / name
    before = pairs.read_text()
    r = fsan("ground", str(anet["h5"]), "--queries", str(pairs), "--checkpoint", str(anet["ckpt"]),
             "--plot", str(plot), "--duration", "30")
    assert (r.exit_code, r.stdout) == (1, "")
    assert message in r.stderr and "Device" not in r.stderr
    assert pairs.read_text() == before


def test_save_predictions_refuses_a_link_and_writes_with_the_umask(anet, tmp_path):
    env = {"FSAN_DATA_DIR": str(anet["root"] / "data")}
    target, link = tmp_path / "target.jsonl", tmp_path / "link.jsonl"
    target.write_text("{}\n")
    link.symlink_to(target)
    r = fsan("evaluate", "--baseline", "prior", "--save-predictions", str(link), "--overwrite", env=env)
    assert (r.exit_code, r.stdout) == (1, "")
    assert "is a link or not a regular file" in r.stderr and link.is_symlink()
    out = tmp_path / "saved.jsonl"
    assert fsan("evaluate", "--baseline", "prior", "--save-predictions", str(out), env=env).exit_code == 0
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
