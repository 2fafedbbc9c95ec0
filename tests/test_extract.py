"""`fsan extract` and `fsan ground VIDEO`: videos made here with PyAV, a CLIP vision model of the
real transformers class built from a tiny config with random weights (saved with
save_pretrained and loaded by the real code through --weights), no network."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

av = pytest.importorskip("av", reason="PyAV is not installed (pip install -e '.[video]')")
pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install -e '.[video]')"
)

from fsan_cli.app import app  # noqa: E402
from fsan_cli.core import checkpoint  # noqa: E402
from fsan_cli.core.settings import load_settings  # noqa: E402
from fsan_cli.data.store import load_store  # noqa: E402
from fsan_cli.train import loop as training  # noqa: E402
from fsan_cli.video.record import from_attrs  # noqa: E402

# (file, width, height, frame rate, frames): two sizes and rates; b lasts an odd 2.72 s
VIDEOS = [("a.mp4", 64, 48, 10, 30), ("b.mkv", 96, 64, 25, 68), ("c.mp4", 48, 80, 8, 44)]
TINY = [
    "model.hidden=32",
    "model.layers=1",
    "model.heads=2",
    "model.align_dim=16",
    "train.epochs=2",
]
QUERIES = {
    "a": "a man opens the door",
    "b": "a woman walks to the car",
    "c": "the dog runs in the park",
}


def make_video(path: Path, width: int, height: int, rate: int, frames: int, seed: int = 0) -> Path:
    """A video of moving bars and shifting colours, encoded with PyAV (mpeg4)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if frames == 0:
            container.start_encoding()
        for i in range(frames):
            img = np.roll(base, 3 * i, axis=1)
            img[:, : (5 * i) % width] = (40 * i) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16)  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    for i, (name, w, h, rate, n) in enumerate(VIDEOS):
        make_video(folder / name, w, h, rate, n, seed=i)
    (folder / "notes.txt").write_text("not a video\n", encoding="utf-8")  # ignored in a folder
    return folder


def run(args: list, env: dict | None = None):
    env = {"COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    return CliRunner().invoke(app, ["--device", "cpu", *map(str, args)], env=env)


def read(path: Path) -> dict[str, tuple[np.ndarray, dict]]:
    with h5py.File(path, "r") as f:
        return {k: (f[k][()], dict(f[k].attrs)) for k in f}


@pytest.fixture(scope="module")
def features(videos, weights, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("features") / "features.h5"
    r = run(["extract", videos, "--out", out, "--weights", weights])
    assert r.exit_code == 0, r.output
    return out


def assert_one_error(r, text: str) -> None:
    assert (r.exit_code, r.stdout) == (1, ""), r.output
    assert text in r.stderr, r.stderr
    assert r.stderr.count("Error:") == 1 and "Traceback" not in r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith("Error:")


# ----------------------------------------------------------------------------- extract


def test_shapes_and_attributes(features, weights):
    got = read(features)
    assert sorted(got) == ["a", "b", "c"]
    for name, _, _, rate, n in VIDEOS:
        rows, attrs = got[Path(name).stem]
        duration = n / rate  # 3.0, 2.72, 5.5 s
        assert attrs["duration"] == pytest.approx(duration, abs=1e-6)
        assert rows.shape == (int(np.ceil(duration * 2 - 1e-6)), 16) and rows.dtype == np.float32
        assert np.isfinite(rows).all() and np.abs(rows).sum() > 0
        record = from_attrs(attrs)
        assert record == {"kind": "clip-image", "fps": 2.0, "library": "transformers",
                          "model": str(weights.resolve()), "sha256": record["sha256"],
                          "image_size": 32, "mean": pytest.approx([0.48145466, 0.4578275, 0.40821073]),
                          "std": pytest.approx([0.26862954, 0.26130258, 0.27577711]), "dim": 16}  # fmt: skip
        assert len(record["sha256"]) == 64
    assert not list(features.parent.glob(".*"))  # no temporary file, no parts folder left


def test_frames_differ_and_output_is_deterministic(features, videos, weights, tmp_path):
    again, small = tmp_path / "again.h5", tmp_path / "small.h5"
    for out, more in ((again, []), (small, ["--batch", "3"])):
        r = run(
            [
                "extract",
                videos / "c.mp4",
                videos / "a.mp4",
                "--out",
                out,
                "--weights",
                weights,
                *more,
            ]
        )
        assert r.exit_code == 0, r.output
    first, second, third = read(features), read(again), read(small)
    for key in ("a", "c"):
        assert np.array_equal(first[key][0], second[key][0])  # the same run: the same bits
        np.testing.assert_allclose(first[key][0], third[key][0], atol=1e-5)  # other batches
    rows = first["c"][0]
    assert not np.allclose(rows[0], rows[-1])  # sampled frames differ


def test_resumed_extraction_equals_uninterrupted(features, videos, weights, tmp_path, monkeypatch):
    out = tmp_path / "resumed.h5"
    r = run(["extract", videos / "b.mkv", "--out", out, "--weights", weights])
    assert r.exit_code == 0, r.output
    # a run killed while extracting its second new video: the first is kept (in the parts
    # folder), the output file is as it was
    from fsan_cli.video import encode as video_module

    original, calls = video_module.extract_video, []

    def killed(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(path, *args, **kwargs)

    monkeypatch.setattr(video_module, "extract_video", killed)
    before = read(out)
    r = run(["extract", videos, "--out", out, "--weights", weights])
    assert r.exit_code == 130, r.output
    assert read(out).keys() == before.keys()
    monkeypatch.setattr(video_module, "extract_video", original)
    r = run(["extract", videos, "--out", out, "--weights", weights, "--json"])
    assert r.exit_code == 0, r.output
    status = {v["video"]: v["status"] for v in json.loads(r.stdout)["videos"]}
    assert status == {"a": "already there", "b": "already there", "c": "extracted"}
    whole, resumed = read(features), read(out)
    assert sorted(resumed) == sorted(whole)
    for key in whole:
        assert np.array_equal(whole[key][0], resumed[key][0])
        assert whole[key][1].keys() == resumed[key][1].keys()
    assert not (tmp_path / ".resumed.h5.parts").exists()


def test_a_corrupt_video_is_skipped_and_the_others_kept(videos, weights, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(videos / "a.mp4", folder / "a.mp4")
    (folder / "broken.mp4").write_bytes(b"\x00\x01 not a video" * 10)
    out = tmp_path / "mixed.h5"
    r = run(["extract", folder, "--out", out, "--weights", weights])
    assert r.exit_code == 1, r.output
    assert (
        f"Warning: skipped {folder / 'broken.mp4'}: {folder / 'broken.mp4'} cannot be decoded"
        in r.stderr
    )
    assert r.stderr.rstrip().splitlines()[-1] == (
        f"Error: 1 of 2 videos could not be read ({folder / 'broken.mp4'}); the others are in {out}. "
        "Fix or remove those files and run again: videos already there are skipped."
    )
    assert re.search(r"│ broken +│ +failed │", r.stdout), r.stdout
    assert sorted(read(out)) == ["a"]


def truncated(videos: Path, tmp: Path) -> Path:
    data = (videos / "a.mp4").read_bytes()
    (tmp / "cut.mp4").write_bytes(data[: len(data) // 2])
    return tmp / "cut.mp4"


@pytest.mark.parametrize("case, message", [
    ("text", "not_video.mp4 cannot be decoded as a video (Invalid data found when processing input). "
             "Check that the file plays"),
    ("truncated", "cut.mp4 cannot be decoded as a video"),
    ("no_frames", "empty.avi holds no video frames. Pass a video file with pictures."),
    ("missing", "does not exist. Pass video files or folders of them."),
    ("no_weights", "the CLIP weights openai/clip-vit-base-patch32 are not in the Hugging Face cache "
                   "and cannot be downloaded"),
    ("weights_not_a_folder", "is not a folder. Pass the folder of a CLIP vision model"),
    ("weights_not_clip", "junk holds no CLIP vision model (Error no file named model.safetensors"),
    ("empty_dir", "holds no video files"),
])  # fmt: skip
def test_bad_input_is_one_error_and_no_output(
    case, message, videos, weights, tmp_path, monkeypatch
):
    args = ["--weights", weights]
    if case == "text":
        video = tmp_path / "not_video.mp4"
        video.write_text("hello\n", encoding="utf-8")
    elif case == "truncated":
        video = truncated(videos, tmp_path)
    elif case == "no_frames":
        video = make_video(tmp_path / "empty.avi", 64, 48, 10, 0)
    elif case == "missing":
        video = tmp_path / "nothing.mp4"
    elif case == "empty_dir":
        video = tmp_path / "none"
        video.mkdir()
    else:
        video = videos / "a.mp4"
        if case == "no_weights":
            args = []  # an empty cache, and offline (read at import, so set here)
            from huggingface_hub import constants

            monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
            monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
        elif case == "weights_not_a_folder":
            args = ["--weights", tmp_path / "nowhere"]
        else:
            (tmp_path / "junk").mkdir()
            args = ["--weights", tmp_path / "junk"]
    out = tmp_path / "out.h5"
    r = run(["extract", video, "--out", out, *args])
    assert_one_error(r, message)
    if case == "no_weights":
        assert "huggingface-cli download openai/clip-vit-base-patch32" in r.stderr
        assert "--weights DIR" in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.h5*"))


def test_another_extractor_into_the_same_file_is_refused(features, videos, weights, tmp_path):
    out = tmp_path / "f.h5"
    shutil.copy(features, out)
    shutil.copy(videos / "a.mp4", tmp_path / "new.mp4")
    r = run(["extract", tmp_path / "new.mp4", "--out", out, "--weights", weights, "--fps", "1"])
    assert_one_error(r, "holds 'a' as CLIP image features of")
    assert "and this run extracts CLIP image features of" in r.stderr and "1 frames/s" in r.stderr
    assert sorted(read(out)) == ["a", "b", "c"]


# ----------------------------------------------------------------------------- prepare, train, ground


@pytest.fixture(scope="module")
def trained(features, tmp_path_factory):
    """A tiny checkpoint trained on the extracted features (prepare --dataset custom)."""
    root = tmp_path_factory.mktemp("custom")
    lines = [{"video": v, "duration": float(read(features)[v][1]["duration"]), "query": q,
              "times": [0.5, 2.0], "split": split}
             for v, q in QUERIES.items() for split in ("train", "val")]  # fmt: skip
    ann = root / "ann.jsonl"
    ann.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    r = run(["prepare", "--dataset", "custom", "--annotations", ann, "--features", features,
             "--data-dir", root / "data", "--clips", "4", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    store = load_store(root / "data" / "custom")
    cfg = load_settings("custom", overrides=[*TINY, "data.clips=4", "train.batch_size=2"])
    training.train(cfg, store, root / "run", torch.device("cpu"), progress=False)
    return root / "run" / "best.pt", store


def test_the_extractor_travels_into_the_store_and_checkpoint(trained, features):
    ckpt_path, store = trained
    record = from_attrs(read(features)["a"][1])
    assert store.manifest["extractor"] == record
    assert checkpoint.load(ckpt_path)["extractor"] == record  # weights_only loading


def test_prepare_videos_extracts_then_prepares(trained, videos, weights, tmp_path):
    _, store = trained
    ann = Path(store.manifest["inputs"][0]["path"])
    r = run(["prepare", "--dataset", "custom", "--annotations", ann, "--videos", videos,
             "--weights", weights, "--data-dir", tmp_path, "--clips", "4", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert sorted(read(tmp_path / "custom-features.h5")) == ["a", "b", "c"]
    again = load_store(tmp_path / "custom")
    assert again.manifest["extractor"] == store.manifest["extractor"]
    assert np.array_equal(again.features, store.features)
    r = run(["prepare", "--dataset", "didemo", "--annotations", ann, "--videos", videos,
             "--data-dir", tmp_path / "d"])  # fmt: skip
    assert (r.exit_code, r.stdout) == (2, "")  # options that cannot go together: bad usage
    assert r.stderr.endswith("\n\nError: --videos extracts features for --dataset custom, not didemo. "
                             "Pass the official feature file of didemo with --features.\n"), r.stderr


def ground(args: list, cache: Path):
    return run(
        ["ground", *args, "--json", "--precision", "fp32"], env={"XDG_CACHE_HOME": str(cache)}
    )


def test_ground_a_video_equals_extract_then_ground(trained, videos, weights, tmp_path):
    ckpt_path, _ = trained
    single = tmp_path / "b.h5"
    assert run(["extract", videos / "b.mkv", "--out", single, "--weights", weights]).exit_code == 0
    query = QUERIES["b"]
    from_file = ground([single, query, "--checkpoint", ckpt_path], tmp_path / "unused")
    assert from_file.exit_code == 0, from_file.output
    cache = tmp_path / "cache"
    direct = ground(
        [videos / "b.mkv", query, "--checkpoint", ckpt_path, "--weights", weights], cache
    )
    assert direct.exit_code == 0, direct.output
    assert direct.stdout == from_file.stdout and json.loads(direct.stdout)["video"] == "b"
    (cached,) = (cache / "fsan" / "features").glob("*.h5")
    assert f"cached in {cached}" in direct.stderr
    # again: from the cache, without loading CLIP (even with its weights gone)
    again = ground([videos / "b.mkv", query, "--checkpoint", ckpt_path], cache)
    assert again.exit_code == 0 and again.stdout == from_file.stdout
    assert f"{cached} (cached)" in again.stderr


def test_ground_refuses_a_checkpoint_of_other_features(trained, videos, weights, tmp_path):
    ckpt_path, _ = trained
    ckpt = checkpoint.load(ckpt_path)
    c3d = dict(ckpt, extractor=None, data={**ckpt["data"], "dataset": "activitynet"})
    checkpoint.save(c3d, tmp_path / "c3d.pt")
    r = ground(
        [videos / "a.mp4", "a man", "--checkpoint", tmp_path / "c3d.pt", "--weights", weights],
        tmp_path,
    )
    assert_one_error(
        r,
        "was trained on features without a recorded extractor (official C3D, I3D or "
        "VGG features), 16-d, of dataset 'activitynet', and ",
    )
    assert "a video file, which fsan turns into CLIP image features" in r.stderr
    other = dict(
        ckpt,
        extractor={
            **ckpt["extractor"],
            "sha256": "0" * 64,
            "model": "openai/clip-vit-large-patch14",
        },
    )
    checkpoint.save(other, tmp_path / "other.pt")
    r = ground(
        [videos / "a.mp4", "a man", "--checkpoint", tmp_path / "other.pt", "--weights", weights],
        tmp_path,
    )
    assert_one_error(
        r,
        "was trained on CLIP image features of openai/clip-vit-large-patch14 (weights "
        "sha256 000000000000, 32 px, 2 frames/s, 16-d), and ",
    )
    assert f"gives CLIP image features of {weights.resolve()} (weights sha256" in r.stderr
    assert not list(tmp_path.glob("fsan/features/*.h5"))


def test_a_truncated_video_to_ground_is_one_error(trained, videos, weights, tmp_path):
    r = ground([truncated(videos, tmp_path), "a man", "--checkpoint", trained[0], "--weights", weights],
               tmp_path / "cache")  # fmt: skip
    assert_one_error(r, "cut.mp4 cannot be decoded as a video")
    assert not list((tmp_path / "cache").rglob("*.h5"))
