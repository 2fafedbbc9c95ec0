"""`fsan prepare` through the CLI: output, exit codes, `Error:` lines, and no partial store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from fsan_cli.app import app
from fsan_cli.data.store import load_store, store_exists

DIM = 16
FIRST = 8  # the feature files hold the first FIRST videos of every split
runner = CliRunner()


def first_videos(folder: Path) -> list[str]:
    videos: dict[str, None] = {}
    for name in ("train", "val_1", "val_2"):
        data = json.loads((folder / f"{name}.json").read_text())
        videos.update(dict.fromkeys(list(data)[:FIRST]))
    return list(videos)


def write_anet(path: Path, videos: list[str], rows=lambda i: 7, dim=lambda i: DIM) -> Path:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5:
        for i, v in enumerate(videos):
            data = rng.standard_normal((rows(i), dim(i))).astype(np.float32)
            h5.create_group(v).create_dataset("c3d_features", data=data)
    return path


@pytest.fixture(scope="module")
def anet(shared_data, tmp_path_factory) -> tuple[Path, Path, list[str]]:
    folder = shared_data / "activitynet"
    videos = first_videos(folder)
    path = write_anet(tmp_path_factory.mktemp("anet") / "c3d.hdf5", videos)
    return folder, path, videos


def invoke(*args: str, env: dict | None = None):
    result = runner.invoke(app, [str(a) for a in args], env=env)
    assert "Traceback" not in result.stderr
    return result


def anet_args(anet, out: Path, *extra: str) -> list:
    folder, features, _ = anet
    return [
        "prepare",
        "--dataset",
        "activitynet",
        "--annotations",
        folder,
        "--features",
        features,
        "--out",
        out,
        "--limit-videos",
        "5",
        *extra,
    ]


def no_leftovers(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_activitynet_table(anet, tmp_path):
    result = invoke(*anet_args(anet, tmp_path / "store"))
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "Prepared activitynet" in out and "queries kept" in out
    assert "N_v = 64, feature dim 16, L2-normalised" in out
    assert "glove-6b-50d, 50-d" in out and "OOV" in out
    store = load_store(tmp_path / "store")
    assert {k: len({q.video for q in v}) for k, v in store.splits.items()} == {
        "train": 5,
        "val": 5,
        "test": 5,
    }
    assert store.features.shape[1:] == (64, DIM) and store.manifest["dataset"] == "activitynet"


def test_json_summary(anet, tmp_path):
    result = invoke(*anet_args(anet, tmp_path / "s", "--json", "--clips", "16", "--no-normalize"))
    assert result.exit_code == 0, result.stderr
    s = json.loads(result.stdout)
    assert s["clips"] == 16 and s["normalize"] is False and s["feature_dim"] == DIM
    assert set(s["splits"]) == {"train", "val", "test"}
    assert {"read", "queries", "videos", "clipped"} <= set(s["splits"]["train"])
    assert "oov_rate" in s and s["limit_videos"] == 5
    # read and dropped count the annotation files; queries and videos what was stored
    assert s["dropped"] == [{"split": "train", "reason": "start >= end", "count": 4}]
    assert s["splits"]["train"]["read"] == 37421 and s["splits"]["train"]["videos"] == 5
    assert not np.allclose(np.linalg.norm(load_store(tmp_path / "s").features, axis=-1), 1.0)


def test_data_dir_from_env_and_overwrite(anet, tmp_path):
    folder, features, _ = anet
    args = [
        "prepare",
        "--dataset",
        "activitynet",
        "--annotations",
        folder,
        "--features",
        features,
        "--limit-videos",
        "2",
        "--json",
    ]
    env = {"FSAN_DATA_DIR": str(tmp_path / "d")}
    assert invoke(*args, env=env).exit_code == 0
    assert store_exists(tmp_path / "d" / "activitynet")
    again = invoke(*args, env=env)
    assert again.exit_code == 1 and again.stdout == ""
    assert again.stderr.startswith(
        f"Error: a prepared store already exists at {tmp_path / 'd' / 'activitynet'}. "
        "Pass --overwrite to replace it, or --out DIR to write elsewhere."
    )
    assert invoke(*args, "--overwrite", env=env).exit_code == 0
    assert no_leftovers(tmp_path / "d")


def test_refuses_to_replace_a_folder_that_is_not_a_store(anet, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    result = invoke(*anet_args(anet, tmp_path / "mine", "--overwrite"))
    assert result.exit_code == 1 and "is not a prepared store" in result.stderr
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_missing_split_file(anet, tmp_path):
    folder, features, _ = anet
    (tmp_path / "ann").mkdir()
    shutil.copy(folder / "train.json", tmp_path / "ann")
    result = invoke(*anet_args((tmp_path / "ann", features, None), tmp_path / "s"))
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"Error: missing split file for val: {tmp_path / 'ann'} has no val_1.json or val.json."
    )
    assert not (tmp_path / "s").exists()


def test_missing_videos_error_then_skip(anet, tmp_path):
    folder, _, videos = anet
    partial = write_anet(tmp_path / "partial.h5", videos[2:])
    args = [
        "prepare",
        "--dataset",
        "activitynet",
        "--annotations",
        folder,
        "--features",
        partial,
        "--out",
        tmp_path / "s",
        "--limit-videos",
        "5",
    ]
    result = invoke(*args)
    assert result.exit_code == 1 and not (tmp_path / "s").exists()
    assert (
        f"Error: 2 of 11 annotated videos have no features in {partial}: {videos[0]}, {videos[1]}"
        in result.stderr
    )
    assert "Pass --skip-missing" in result.stderr
    ok = invoke(*args, "--skip-missing", "--json")
    assert ok.exit_code == 0
    assert "Warning:" in ok.stderr and "--skip-missing" in ok.stderr
    s = json.loads(ok.stdout)
    assert s["missing_videos"]["count"] == 2 and s["splits"]["train"]["videos"] == 3
    train = json.loads((folder / "train.json").read_text())
    lost = len(train[videos[0]]["sentences"]) + len(train[videos[1]]["sentences"])
    assert {"split": "train", "reason": "video not in the feature file", "count": lost} in s[
        "dropped"
    ]


def test_wrong_layout_says_expected_and_found(anet, tmp_path):
    folder, _, videos = anet
    path = tmp_path / "flat.h5"
    with h5py.File(path, "w") as h5:
        for v in videos:
            g = h5.create_group(v)
            g.create_dataset("rgb", data=np.ones((3, DIM), np.float32))
            g.create_dataset("flow", data=np.ones((3, DIM), np.float32))
    result = invoke(*anet_args((folder, path, None), tmp_path / "s"))
    assert result.exit_code == 1
    assert "expected a group per video 'v_<id>' holding dataset 'c3d_features'" in result.stderr
    assert "found at" in result.stderr and "a group with members [flow, rgb]" in result.stderr
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5:
        h5.create_dataset("features", data=np.ones((10, 3, DIM), np.float32))
    result = invoke(*anet_args((folder, other, None), tmp_path / "s"))
    assert result.exit_code == 1
    assert "none of the 11 annotated videos is in" in result.stderr  # val_1, val_2 share 4
    assert "found keys like ['features']" in result.stderr


def test_ids_without_the_v_prefix_are_found(anet, tmp_path):
    folder, _, videos = anet
    path = write_anet(tmp_path / "bare.h5", [v.removeprefix("v_") for v in videos])
    result = invoke(*anet_args((folder, path, None), tmp_path / "s", "--json"))
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["videos"] == 11


def test_inconsistent_dims(anet, tmp_path):
    folder, _, videos = anet
    path = write_anet(tmp_path / "mixed.h5", videos, dim=lambda i: 8 if i == 3 else DIM)
    result = invoke(*anet_args((folder, path, None), tmp_path / "s"))
    assert result.exit_code == 1
    assert "Error: inconsistent feature dimensions" in result.stderr
    assert f"D=8 (e.g. {videos[3]})" in result.stderr


def test_nan_rows_are_zeroed_with_a_warning(anet, tmp_path):
    folder, _, videos = anet
    path = write_anet(tmp_path / "nan.h5", videos)
    with h5py.File(path, "a") as h5:
        data = h5[videos[1]]["c3d_features"][()]
        data[2, 0] = np.nan
        data[4, 3] = np.inf
        h5[videos[1]]["c3d_features"][...] = data
    result = invoke(*anet_args((folder, path, None), tmp_path / "s", "--json"))
    assert result.exit_code == 0
    assert f"2 feature rows with NaN or inf in 1 videos (e.g. {videos[1]})" in result.stderr
    assert json.loads(result.stdout)["nonfinite"]["rows"] == 2
    assert np.isfinite(load_store(tmp_path / "s").features).all()


def test_interrupted_prepare_leaves_no_store(anet, tmp_path, monkeypatch):
    import fsan_cli.data.prepare as prep

    assert invoke(*anet_args(anet, tmp_path / "s")).exit_code == 0
    before = (tmp_path / "s" / "features.npy").read_bytes()
    calls = {"n": 0}
    real = prep.video_clips

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(prep, "video_clips", interrupted)
    result = invoke(*anet_args(anet, tmp_path / "new"))
    assert result.exit_code == 130
    assert result.stderr.splitlines()[-1].startswith("Error: interrupted.")
    assert not (tmp_path / "new").exists() and no_leftovers(tmp_path)
    calls["n"] = 0
    result = invoke(*anet_args(anet, tmp_path / "s", "--overwrite", "--clips", "8"))
    assert result.exit_code == 130
    assert (tmp_path / "s" / "features.npy").read_bytes() == before  # the old store is intact
    assert no_leftovers(tmp_path)


def test_failure_while_writing_keeps_the_old_store(anet, tmp_path, monkeypatch):
    import fsan_cli.data.store as store_mod

    assert invoke(*anet_args(anet, tmp_path / "s")).exit_code == 0
    real = store_mod.np.save

    def full_disk(path, arr, *a, **k):
        if str(path).endswith("vectors.npy"):
            raise OSError(28, "No space left on device")
        return real(path, arr, *a, **k)

    monkeypatch.setattr(store_mod.np, "save", full_disk)
    result = invoke(*anet_args(anet, tmp_path / "s", "--overwrite", "--clips", "8"))
    assert result.exit_code == 1
    assert result.stderr.endswith(f"Error: cannot write the store at {tmp_path / 's'}: no space is left "
                                  "on the disk. Free some space on it, or choose another --out or --data-dir.\n")
    assert load_store(tmp_path / "s").clips == 64 and no_leftovers(tmp_path)


def test_bad_files_are_user_errors(anet, tmp_path):
    folder, features, _ = anet
    result = invoke(*anet_args((folder, tmp_path / "nope.h5", None), tmp_path / "s"))
    assert result.exit_code == 1 and "Error: --features" in result.stderr
    (tmp_path / "text.h5").write_text("not hdf5")
    result = invoke(*anet_args((folder, tmp_path / "text.h5", None), tmp_path / "s"))
    assert result.exit_code == 1 and "is not a readable HDF5 file" in result.stderr
    result = invoke(*anet_args((tmp_path / "nowhere", features, None), tmp_path / "s"))
    assert result.exit_code == 1 and "Error: --annotations" in result.stderr
    (tmp_path / "ann").mkdir()
    for name in ("train.json", "val_1.json", "val_2.json"):
        (tmp_path / "ann" / name).write_text('[{"a": 1}]')
    result = invoke(*anet_args((tmp_path / "ann", features, None), tmp_path / "s"))
    assert result.exit_code == 1 and "not in the ActivityNet-Captions layout" in result.stderr


def test_malformed_entries_name_the_entry(anet, tmp_path, shared_data):
    folder, features, videos = anet
    (tmp_path / "ann").mkdir()
    for name in ("train.json", "val_1.json", "val_2.json"):
        shutil.copy(folder / name, tmp_path / "ann")
    bad = {videos[0]: {"duration": 10, "timestamps": [3], "sentences": ["x"]}}
    (tmp_path / "ann" / "val_1.json").write_text(json.dumps(bad))
    result = invoke(*anet_args((tmp_path / "ann", features, None), tmp_path / "s"))
    assert result.exit_code == 1
    assert f"val_1.json: video {videos[0]} is malformed (TypeError" in result.stderr
    bad = {videos[0]: {"duration": True, "timestamps": [[1, 2]], "sentences": ["x"]}}  # not 1.0 s
    (tmp_path / "ann" / "val_1.json").write_text(json.dumps(bad))
    result = invoke(*anet_args((tmp_path / "ann", features, None), tmp_path / "s"))
    assert result.exit_code == 1
    assert f"val_1.json: video {videos[0]} is malformed (TypeError: duration true is not a number" in result.stderr
    bad = {videos[0]: {"duration": None, "timestamps": [[1, 2]], "sentences": ["x"]}}
    (tmp_path / "ann" / "val_1.json").write_text(json.dumps(bad))
    result = invoke(*anet_args((tmp_path / "ann", features, None), tmp_path / "s"))
    assert f"val_1.json: video {videos[0]} is malformed (TypeError: duration null is not a number" in result.stderr
    (tmp_path / "dd").mkdir()
    entry = json.loads((shared_data / "didemo" / "val_data.json").read_text())[0]
    for split in ("train", "val", "test"):
        (tmp_path / "dd" / f"{split}_data.json").write_text(
            json.dumps([entry, {**entry, "times": 5}])
        )
    result = invoke(
        "prepare",
        "--dataset",
        "didemo",
        "--annotations",
        tmp_path / "dd",
        "--features",
        features,
        "--out",
        tmp_path / "s",
    )
    assert result.exit_code == 1 and "train_data.json: entry 1 is malformed" in result.stderr


def test_usage_errors_exit_2(anet, tmp_path):
    folder, features, _ = anet
    result = invoke(
        "prepare", "--dataset", "synthetic", "--annotations", folder, "--features", features
    )
    assert result.exit_code == 2
    assert invoke("prepare", "--dataset", "activitynet").exit_code == 2


def test_didemo_pca_default_needs_wide_features(shared_data, tmp_path):
    folder = tmp_path / "didemo"
    folder.mkdir()
    entries = json.loads((shared_data / "didemo" / "val_data.json").read_text())[:40]
    for split in ("train", "val", "test"):
        (folder / f"{split}_data.json").write_text(json.dumps(entries))
    with h5py.File(tmp_path / "fc7.h5", "w") as h5:
        for e in entries:
            if e["video"] not in h5:
                h5.create_dataset(e["video"], data=np.random.rand(6, DIM).astype(np.float32))
    args = [
        "prepare",
        "--dataset",
        "didemo",
        "--annotations",
        folder,
        "--features",
        tmp_path / "fc7.h5",
        "--out",
        tmp_path / "s",
    ]
    result = invoke(*args)
    assert result.exit_code == 1
    assert "Error: --pca 500 is more than the feature dimension 16" in result.stderr
    result = invoke(*args, "--pca", "4", "--json")
    assert result.exit_code == 0, result.stderr
    s = json.loads(result.stdout)
    assert s["feature_dim"] == 4 and s["clips"] == 6 and s["pca"]["dim_out"] == 4
    assert load_store(tmp_path / "s").pca["mean"].shape == (DIM,)


CUSTOM = [
    {
        "video": "a",
        "duration": 30,
        "query": "a man opens the door",
        "times": [2, 8],
        "split": "train",
    },
    {"video": "a", "duration": 30, "query": "he sits down", "split": "train"},
    {
        "video": "b",
        "duration": 12.5,
        "query": "a dog barks",
        "times": [[1, 3], [2, 14]],
        "split": "test",
    },
    {"video": "c", "duration": 20, "query": "the dog runs away", "times": [9, 5], "split": "test"},
    {"video": "c", "duration": 20, "query": "the dog runs", "split": "val"},
]


def write_custom(tmp_path: Path, lines: list) -> tuple[Path, Path]:
    ann = tmp_path / "queries.jsonl"
    ann.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    feats = tmp_path / "feats.h5"
    with h5py.File(feats, "w") as h5:
        for v, rows in (("a", 40), ("b", 3), ("c", 25)):
            h5.create_dataset(v, data=np.random.rand(rows, DIM).astype(np.float32))
    return ann, feats


def test_custom_dataset(tmp_path):
    ann, feats = write_custom(tmp_path, CUSTOM)
    result = invoke(
        "prepare",
        "--dataset",
        "custom",
        "--annotations",
        ann,
        "--features",
        feats,
        "--out",
        tmp_path / "s",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    s = json.loads(result.stdout)
    assert list(s["splits"]) == ["train", "val", "test"] and s["clips"] == 32
    assert s["dropped"] == [{"split": "test", "reason": "start >= end", "count": 1}]
    store = load_store(tmp_path / "s")
    assert store.splits["test"][0].times == [[1.0, 3.0], [2.0, 12.5]]
    assert store.splits["train"][1].times == [] and store.features.shape == (3, 32, DIM)
    assert [v["rows"] for v in store.videos] == [40, 25, 3]


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"video": "a", "query": "x"}', "queries.jsonl:2 has no duration"),
        ("{not json", "queries.jsonl:2 is not JSON"),
        (
            '{"video": "a", "duration": 31, "query": "x"}',
            "video a has duration 31.0, but 30.0 on line 1",
        ),
        (
            '{"video": "a", "duration": 30, "query": "x", "times": "soon"}',
            "times must be [start, end]",
        ),
    ],
)
def test_custom_errors_name_the_line(tmp_path, line, message):
    ann, feats = write_custom(tmp_path, [CUSTOM[0], line])
    result = invoke(
        "prepare",
        "--dataset",
        "custom",
        "--annotations",
        ann,
        "--features",
        feats,
        "--out",
        tmp_path / "s",
    )
    assert result.exit_code == 1 and message in result.stderr, result.stderr
    assert result.stderr.startswith("Error: ") and not (tmp_path / "s").exists()
