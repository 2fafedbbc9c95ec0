"""Semi-synthetic data (fsan_cli/data/semisynthetic.py): caption signal inside the real spans,
and the official layouts read back through `fsan prepare`."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from fsan_cli.data import semisynthetic
from fsan_cli.data.store import load_store
from fsan_cli.train.fit import too_coarse


def _signal(x: np.ndarray, duration: float, span: tuple[float, float]) -> np.ndarray:
    centres = (np.arange(len(x)) + 0.5) / len(x) * duration
    inside = (centres >= span[0]) & (centres < span[1])
    return x[inside].mean(0) - x[~inside].mean(0)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_same_caption_same_signal_inside_its_span():
    """Rows inside a caption's span carry that caption's vector over the video's background:
    the same words in two videos give the same inside-minus-outside direction, other words
    another one."""
    videos = {
        "a": {"duration": 100.0, "spans": [(20.0, 50.0)], "captions": ["a man plays the guitar"]},
        "b": {"duration": 80.0, "spans": [(40.0, 70.0)], "captions": ["the man plays a guitar"]},
        "c": {"duration": 90.0, "spans": [(10.0, 40.0)], "captions": ["a woman rides a horse"]},
    }
    feats = semisynthetic.synthesise(videos, dim=64, rows_per_s=1.0, noise=0.3, seed=0)
    assert {k: v.shape for k, v in feats.items()} == {"a": (100, 64), "b": (80, 64), "c": (90, 64)}
    sig = {k: _signal(feats[k], v["duration"], v["spans"][0]) for k, v in videos.items()}
    assert _cos(sig["a"], sig["b"]) > 0.95
    assert _cos(sig["a"], sig["c"]) < _cos(sig["a"], sig["b"]) - 0.2


@pytest.mark.parametrize("dataset", ["activitynet", "charades"])
def test_official_layouts_through_prepare(shared_data, tmp_path, monkeypatch, dataset):
    monkeypatch.setitem(semisynthetic.SIZES, "tiny", {"train": 20, "val": 5, "test": 5})
    data_dir = semisynthetic.build_and_prepare(dataset, shared_data / dataset, tmp_path, "tiny", dim=16)
    store = load_store(data_dir / dataset)
    assert store.feature_dim == 16
    assert too_coarse(store) is None  # the benchmarks' real spans span clips: fsan train does not warn
    splits = {k: len({q.video for q in v}) for k, v in store.splits.items()}
    if dataset == "activitynet":
        assert (splits["train"], splits["val"], splits["test"]) == (20, 5, 5)
    else:  # Charades-STA has no val: prepare holds out 10% of train videos (2 of 20)
        assert (splits["train"], splits["val"], splits["test"]) == (18, 2, 5)


def test_build_reuses_a_matching_store_and_rebuilds_a_different_one(shared_data, tmp_path, monkeypatch):
    monkeypatch.setitem(semisynthetic.SIZES, "tiny", {"train": 6, "val": 2, "test": 2})
    data_dir = semisynthetic.build_and_prepare("charades", shared_data / "charades", tmp_path, "tiny", dim=16)
    stored = data_dir / "charades"
    before = {p.name: p.stat().st_mtime_ns for p in stored.iterdir()}
    calls = []
    monkeypatch.setattr(semisynthetic.subprocess, "run", lambda *a, **k: calls.append(a))
    assert semisynthetic.build_and_prepare("charades", shared_data / "charades", tmp_path, "tiny", dim=16) == data_dir
    assert calls == [] and {p.name: p.stat().st_mtime_ns for p in stored.iterdir()} == before
    semisynthetic.build_and_prepare("charades", shared_data / "charades", tmp_path, "tiny", dim=8)
    assert len(calls) == 1  # other options: built and prepared again
    monkeypatch.setitem(semisynthetic.SIZES, "tiny", {"train": 7, "val": 2, "test": 2})
    semisynthetic.build_and_prepare("charades", shared_data / "charades", tmp_path, "tiny", dim=8)
    assert len(calls) == 2  # the same options but another subset of videos: built again


@pytest.mark.parametrize("dataset", ["activitynet", "charades"])
def test_hidden_vectors_are_what_the_rows_carry(shared_data, tmp_path, monkeypatch, dataset):
    """hidden_vectors (read by benchmarks/quality/long_videos.py --diagnose) gives exactly the
    vector synthesise adds inside each caption's span: without noise, a row inside one caption's
    span minus a row outside every span is that caption's vector. The videos are the real
    files' as a build keeps them (activitynet_videos, charades_videos), and the build's features
    are synthesise's of them."""
    monkeypatch.setitem(semisynthetic.SIZES, "tiny", {"train": 3, "val": 2, "test": 2})
    opts = type("Opts", (), {"dim": 16, "rows_per_second": 1.0, "noise": 0.0, "seed": 3})
    build = {"activitynet": semisynthetic.build_activitynet, "charades": semisynthetic.build_charades}[dataset]
    built = build(shared_data / dataset, tmp_path, "tiny", opts)
    videos = {"activitynet": semisynthetic.activitynet_videos,
              "charades": semisynthetic.charades_videos}[dataset](tmp_path / "annotations")
    with h5py.File(built, "r") as fh:
        assert sorted(fh) == sorted(videos)
        first = fh[sorted(fh)[0]]
        written = (first["c3d_features"] if isinstance(first, h5py.Group) else first)[()]
    feats = semisynthetic.synthesise(videos, 16, 1.0, 0.0, 3)
    np.testing.assert_array_equal(written, feats[sorted(videos)[0]])
    hidden, _ = semisynthetic.hidden_vectors(videos, 16, 3)
    assert set(hidden) == {(v, k) for v, info in videos.items() for k in range(len(info["captions"]))}
    checked = 0
    for v, info in videos.items():
        x = feats[v]
        centres = np.arange(len(x)) + 0.5
        covered = np.array([[s <= c < e for s, e in info["spans"]] for c in centres])  # (T, captions)
        alone, empty = np.flatnonzero(covered.sum(1) == 1), np.flatnonzero(covered.sum(1) == 0)
        if len(alone) and len(empty):
            k = int(np.flatnonzero(covered[alone[0]])[0])
            np.testing.assert_allclose(x[alone[0]] - x[empty[0]], hidden[(v, k)], atol=1e-5)
            checked += 1
    assert checked >= 1
