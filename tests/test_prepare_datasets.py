"""Every adapter on the full real annotation files, with generated features in the official layouts.

Counts are the paper's (§4.1): ActivityNet-Captions 37,421 / 17,505 / 17,031 pairs, DiDeMo
4,180 / 4,021 queries, Charades-STA 12,408 / 3,720 lines.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from fsan_cli.core.errors import FsanError
from fsan_cli.data.prepare import PrepareOptions, prepare_dataset
from fsan_cli.data.store import load_store

DIM = 16


def _rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal((n, DIM)).astype(np.float32)


@pytest.fixture(scope="session")
def anet_features(shared_data, tmp_path_factory) -> Path:
    """sub_activitynet_v1-3.c3d.hdf5 layout for all 14,926 videos (T = 1..11, so some T < N_v)."""
    videos: set[str] = set()
    for name in ("train", "val_1", "val_2"):
        videos |= set(json.loads((shared_data / "activitynet" / f"{name}.json").read_text()))
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("anet") / "sub_activitynet_v1-3.c3d.hdf5"
    with h5py.File(path, "w") as h5:
        for v in sorted(videos):
            h5.create_group(v).create_dataset(
                "c3d_features", data=_rows(rng, int(rng.integers(1, 12)))
            )
    return path


@pytest.fixture(scope="session")
def didemo_files(shared_data, tmp_path_factory) -> tuple[Path, Path]:
    """The real val/test files beside a small train file in the official format, and an
    average_fc7.h5-layout file: (6, D) per video, zero rows past num_segments."""
    folder = tmp_path_factory.mktemp("didemo")
    entries = {}
    for split in ("val", "test"):
        src = shared_data / "didemo" / f"{split}_data.json"
        (folder / src.name).symlink_to(src)
        entries[split] = json.loads(src.read_text())
    words = ["a", "man", "dog", "runs", "the", "camera", "pans", "left", "girl", "jumps"]
    rng = np.random.default_rng(1)
    train = []
    for i in range(300):
        a = int(rng.integers(0, 6))
        train.append(
            {
                "annotation_id": 900000 + i,
                "description": " ".join(rng.choice(words, 5)),
                "video": f"train_{i // 3:04d}.mp4",
                "times": [[a, int(rng.integers(a, 6))] for _ in range(4)],
                "num_segments": 6 if i % 2 else 5,
                "dl_link": "",
            }
        )
    (folder / "train_data.json").write_text(json.dumps(train))
    segments = {e["video"]: e["num_segments"] for es in [*entries.values(), train] for e in es}
    path = folder / "average_fc7.h5"
    with h5py.File(path, "w") as h5:
        for video, n in segments.items():
            x = _rows(rng, 6) + 3
            x[n:] = 0
            h5.create_dataset(video, data=x)
    return folder, path


@pytest.fixture(scope="session")
def charades_features(shared_data, tmp_path_factory) -> Path:
    videos: set[str] = set()
    for split in ("train", "test"):
        with open(shared_data / "charades" / f"Charades_v1_{split}.csv", newline="") as fh:
            videos |= {row["id"] for row in csv.DictReader(fh)}
    rng = np.random.default_rng(2)
    path = tmp_path_factory.mktemp("charades") / "charades_i3d.hdf5"
    with h5py.File(path, "w") as h5:
        for v in sorted(videos):
            h5.create_dataset(v, data=_rows(rng, int(rng.integers(20, 40))))
    return path


def _prepare(tmp_path: Path, dataset: str, annotations: Path, features: Path, **kw) -> dict:
    opts = PrepareOptions(
        dataset=dataset,
        annotations=annotations,
        features=features,
        out=tmp_path / dataset,
        clips={"activitynet": 64, "didemo": 6, "charades": 32}[dataset],
        progress=False,
        **kw,
    )
    return prepare_dataset(opts)


def test_activitynet_full(shared_data, anet_features, tmp_path):
    s = _prepare(tmp_path, "activitynet", shared_data / "activitynet", anet_features)
    assert {k: v["read"] for k, v in s["splits"].items()} == {
        "train": 37421,
        "val": 17505,
        "test": 17031,
    }
    assert {k: v["queries"] for k, v in s["splits"].items()} == {
        "train": 37417,
        "val": 17505,
        "test": 17031,
    }
    assert {k: v["videos"] for k, v in s["splits"].items()} == {
        "train": 10009,
        "val": 4917,
        "test": 4885,
    }
    assert s["dropped"] == [{"split": "train", "reason": "start >= end", "count": 4}]
    assert s["videos"] == 14926 and s["feature_dim"] == DIM and s["clips"] == 64
    assert 0 < s["oov_rate"] < 5 and s["missing_videos"]["count"] == 0

    store = load_store(tmp_path / "activitynet")
    assert store.features.shape == (14926, 64, DIM) and np.isfinite(store.features).all()
    np.testing.assert_allclose(np.linalg.norm(store.features, axis=-1), 1.0, rtol=1e-4)
    assert store.manifest["splits"] == {"train": 37417, "val": 17505, "test": 17031}
    first = store.splits["train"][0]
    assert first.video == "v_QOlSCBRmfWY" and first.duration == 82.73
    assert first.query == "A young woman is seen standing in a room and leads into her dancing."
    assert first.times == [[0.83, 19.86]]
    for q in store.splits["test"]:
        ((a, b),) = q.times
        assert 0 <= a < b <= q.duration
    index = store.video_index
    assert all(store.videos[index[q.video]]["duration"] == q.duration for q in store.splits["val"])
    roles = [i["role"] for i in store.manifest["inputs"]]
    assert roles.count("annotations") == 3 and "features" in roles
    md5 = {Path(i["path"]).name: i["md5"] for i in store.manifest["inputs"] if "md5" in i}
    sums = dict(line.split()[::-1] for line in (shared_data / "MD5SUMS").read_text().splitlines())
    assert all(sums[f"activitynet/{name}"] == value for name, value in md5.items())
    assert store.vocab[:2] == ["<pad>", "<unk>"] and store.vectors.shape == (len(store.vocab), 50)


def test_didemo_full_official_protocol_and_pca(didemo_files, tmp_path):
    folder, features = didemo_files
    s = _prepare(tmp_path, "didemo", folder, features, pca=8)
    assert {k: v["queries"] for k, v in s["splits"].items()} == {
        "train": 300,
        "val": 4180,
        "test": 4021,
    }
    assert s["feature_dim_in"] == DIM and s["feature_dim"] == 8
    assert s["pca"]["fit_split"] == "train" and s["pca"]["fit_rows"] == 100 * 6 - 50  # no padding
    store = load_store(tmp_path / "didemo")
    assert store.pca["components"].shape == (8, DIM) and store.features.shape[1:] == (6, 8)
    q = store.splits["val"][0]
    assert q.extra == {"annotation_id": 49152, "chunks": [[1, 1], [1, 1], [1, 1], [0, 0]]}
    assert q.times == [[5.0, 10.0], [5.0, 10.0], [5.0, 10.0], [0.0, 5.0]] and q.duration == 30.0
    # a 5-segment video keeps its sixth (absent) clip at zero through PCA and normalisation
    five = next(
        e["video"]
        for e in json.loads((folder / "val_data.json").read_text())
        if e["num_segments"] == 5
    )
    clips = store.features[store.video_index[five]]
    assert not clips[5].any() and np.linalg.norm(clips[0]) == pytest.approx(1.0, rel=1e-4)
    # the PCA was fitted on train only: refitting on val/test rows would give another mean
    with h5py.File(features) as h5:
        train_rows = np.concatenate([h5[f"train_{i:04d}.mp4"][()] for i in range(100)])
    train_rows = train_rows[train_rows.any(axis=1)]
    np.testing.assert_allclose(store.pca["mean"], train_rows.mean(0), rtol=1e-5)


def test_charades_full_clip_convention(shared_data, charades_features, tmp_path):
    s = _prepare(tmp_path, "charades", shared_data / "charades", charades_features, val_share=0)
    assert list(s["splits"]) == ["train", "test", "test_clean"]
    assert s["splits"]["train"]["read"] == 12408 and s["splits"]["test"]["read"] == 3720
    assert s["splits"]["test"]["queries"] == 3720
    assert s["splits"]["test_clean"]["queries"] == 3158
    assert s["splits"]["train"]["queries"] == 12408 - 4
    assert s["splits"]["test"]["clipped"] == 562
    reasons = {(d["split"], d["reason"]): d["count"] for d in s["dropped"]}
    assert reasons == {("train", "start >= end"): 4}  # 3 of them also start after the end
    store = load_store(tmp_path / "charades")
    past = [q for q in store.splits["test"] if q.extra["past_end"]]
    assert len(past) == 562 and all(q.times[0][1] == q.duration for q in past)
    assert not any(q.extra["past_end"] for q in store.splits["test_clean"])


def test_charades_val_carved_from_train(shared_data, charades_features, tmp_path):
    """No val split in the files: 10% of the train videos (all their lines) become val, the same
    ones on every run; test is untouched."""
    s = _prepare(tmp_path, "charades", shared_data / "charades", charades_features)
    sp = s["splits"]
    assert list(sp) == ["train", "val", "test", "test_clean"]
    assert sp["train"]["read"] + sp["val"]["read"] == 12408
    assert sp["train"]["queries"] + sp["val"]["queries"] == 12408 - 4
    videos = sp["train"]["videos"] + sp["val"]["videos"]
    assert sp["val"]["videos"] == round(0.1 * videos)
    assert sp["test"]["queries"] == 3720
    assert any("held out as val" in n for n in s["notes"])
    store = load_store(tmp_path / "charades")
    train, val = ({q.video for q in store.splits[k]} for k in ("train", "val"))
    assert not train & val
    again = _prepare(tmp_path / "again", "charades", shared_data / "charades", charades_features)
    assert again["splits"]["val"] == sp["val"]
    assert {q.video for q in load_store(tmp_path / "again" / "charades").splits["val"]} == val


def test_val_share_out_of_range(shared_data, charades_features, tmp_path):
    with pytest.raises(FsanError, match="--val-share must be in"):
        _prepare(tmp_path, "charades", shared_data / "charades", charades_features, val_share=1.0)


def test_charades_drop_convention(shared_data, charades_features, tmp_path):
    s = _prepare(
        tmp_path,
        "charades",
        shared_data / "charades",
        charades_features,
        charades_convention="drop",
    )
    assert s["splits"]["test"]["queries"] == 3158 and "test_clean" not in s["splits"]
    reasons = {(d["split"], d["reason"]): d["count"] for d in s["dropped"]}
    assert reasons[("test", "ends after the video")] == 562
    assert reasons[("train", "ends after the video")] == 1805 - 3  # 3 have start >= end


def test_charades_word2vec_vectors(shared_data, charades_features, tmp_path):
    s = _prepare(
        tmp_path,
        "charades",
        shared_data / "charades",
        charades_features,
        glove=str(shared_data / "charades" / "glove_charades_300d_subset.word2vec.bin"),
        limit_videos=50,
    )
    sp = s["splits"]
    assert s["word_vectors"]["dim"] == 300 and sp["train"]["videos"] + sp["val"]["videos"] == 50
    assert load_store(tmp_path / "charades").vectors.shape[1] == 300
