"""Faults on the video side (issue 29): a full disk during `fsan extract`, two extracts into one
--out, killed runs' temporary files, the feature cache of `fsan ground VIDEO` checked before use,
features of other CLIP weights, a video named `features`, truncated videos, damaged extractor
records and weights, offline without weights. Tiny random CLIP models saved with save_pretrained
and videos made here with PyAV; no network."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

av = pytest.importorskip("av", reason="PyAV is not installed (pip install -e '.[video]')")
pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[video]')")

from fsan_cli.app import app  # noqa: E402
from fsan_cli.core import checkpoint  # noqa: E402
from fsan_cli.core.settings import load_settings  # noqa: E402
from fsan_cli.data.store import load_store  # noqa: E402
from fsan_cli.train import loop as training  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUERY = "a man opens the door"


def make_video(path: Path, frames: int = 30, rate: int = 10, seed: int = 0, size=(64, 48)) -> Path:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            img = np.roll(base, 3 * i, axis=1)
            img[:, : (5 * i) % size[0]] = (40 * i) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def save_clip(folder: Path, seed: int) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16)
    torch.manual_seed(seed)
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", 0)


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory) -> Path:
    return save_clip(tmp_path_factory.mktemp("clip") / "other-clip", 1)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    for i, (name, frames) in enumerate([("a.mp4", 30), ("b.mp4", 40), ("c.mp4", 44)]):
        make_video(folder / name, frames, seed=i)
    return folder


def run(args: list, env: dict | None = None):
    env = {"COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    return CliRunner().invoke(app, ["--device", "cpu", *map(str, args)], env=env)


def ground(args: list, cache: Path):
    return run(["ground", *args, "--json", "--precision", "fp32"], env={"XDG_CACHE_HOME": str(cache)})


def assert_one_error(r, text: str) -> None:
    assert (r.exit_code, r.stdout) == (1, ""), r.output
    assert text in r.stderr, r.stderr
    assert r.stderr.count("Error:") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "unexpected" not in r.stderr and "report it as a bug" not in r.stderr, r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith("Error:")


@pytest.fixture(scope="module")
def features(videos, weights, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("features") / "features.h5"
    r = run(["extract", videos, "--out", out, "--weights", weights])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def trained(features, tmp_path_factory) -> Path:
    """A tiny checkpoint trained on `weights`' features of a, b, c."""
    root = tmp_path_factory.mktemp("custom")
    with h5py.File(features, "r") as h5:
        seconds = {k: float(h5[k].attrs["duration"]) for k in h5}
    lines = [{"video": v, "duration": seconds[v], "query": q, "times": [0.5, 2.0], "split": split}
             for v, q in zip("abc", [QUERY, "a woman walks to the car", "the dog runs"], strict=True)
             for split in ("train", "val")]
    (root / "ann.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    r = run(["prepare", "--dataset", "custom", "--annotations", root / "ann.jsonl", "--features", features,
             "--data-dir", root / "data", "--clips", "4"])
    assert r.exit_code == 0, r.output
    cfg = load_settings("custom", overrides=["model.hidden=16", "model.layers=1", "model.heads=2",
                                             "model.align_dim=8", "train.epochs=1", "data.clips=4",
                                             "train.batch_size=2"])
    training.train(cfg, load_store(root / "data" / "custom"), root / "run", torch.device("cpu"), progress=False)
    return root / "run" / "best.pt"


def h5_failing_writes(monkeypatch, after_opens: int = 0) -> None:
    """h5py's writes fail as on a full disk: opening a file for writing raises what h5py raises
    when its driver's write hits ENOSPC."""
    original, opened = h5py.File, []

    def file(name, mode="r", *args, **kwargs):
        if mode in ("w", "w-", "x", "a", "r+"):
            opened.append(name)
            if len(opened) > after_opens:
                raise RuntimeError("Can't decrement id ref count (file write failed: time = now, filename = "
                                   f"'{name}', file descriptor = 3, errno = 28, error message = 'No space "
                                   "left on device', buf = 0x1, total write size = 20480)")
        return original(name, mode, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", file)


# ----------------------------------------------------------------------------- D2: a full disk


def test_extract_onto_a_full_disk_is_one_error_and_nothing_left(videos, weights, tmp_path, monkeypatch):
    h5_failing_writes(monkeypatch)
    out = tmp_path / "f.h5"
    r = run(["extract", videos, "--out", out, "--weights", weights])
    assert_one_error(r, f"cannot write {tmp_path / '.f.h5.parts'}")
    assert "no space is left on the disk. Free some space on it, or pass another --out" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no part, no temporary file, no lock


def test_a_full_disk_at_the_final_merge_keeps_the_finished_videos(videos, weights, tmp_path, monkeypatch):
    h5_failing_writes(monkeypatch, after_opens=3)  # the three parts are written, the merge is not
    out = tmp_path / "f.h5"
    r = run(["extract", videos, "--out", out, "--weights", weights])
    assert_one_error(r, f"cannot write {out}: no space is left on the disk")
    assert "the 3 videos extracted are kept in" in r.stderr
    monkeypatch.undo()
    assert not out.exists() and not list(tmp_path.glob(".f.h5.*.tmp"))
    r = run(["extract", videos, "--out", out, "--weights", weights, "--json"])  # space freed: it goes on
    assert r.exit_code == 0, r.output
    assert {v["status"] for v in json.loads(r.stdout)["videos"]} == {"already there"}
    with h5py.File(out, "r") as h5:
        assert sorted(h5) == ["a", "b", "c"]


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True)
    return done.returncode == 0


def test_extract_onto_a_real_full_disk_does_not_crash(videos, weights, tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "256k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as fh:  # fill it, then free 12 KB: the lock fits, a part does not
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError:
                pass
        os.truncate(filler, max(0, filler.stat().st_size - 12 * 1024))
        code = "import sys; from fsan_cli.app import main; sys.argv[0] = 'fsan'; main()"
        done = subprocess.run([sys.executable, "-c", code, "--device", "cpu", "extract", str(videos),
                               "--out", str(disk / "f.h5"), "--weights", str(weights)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, (done.returncode, done.stderr)  # not 139 (a segfault)
        assert "no space is left on the disk" in done.stderr, done.stderr
        assert done.stderr.count("Error:") == 1 and "Exception ignored" not in done.stderr, done.stderr
        parts = sorted((disk / ".f.h5.parts").glob("*")) if (disk / ".f.h5.parts").exists() else []
        assert all(p.suffix == ".h5" for p in parts)  # finished videos only: no temporary file
        assert (f"the {len(parts)} videos extracted are kept" in done.stderr) == bool(parts), done.stderr
        assert sorted(p.name for p in disk.iterdir()) == ([".f.h5.parts"] if parts else []) + ["filler"]
        filler.unlink()  # space freed: the same command finishes
        again = subprocess.run(done.args, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        with h5py.File(disk / "f.h5", "r") as h5:
            assert sorted(h5) == ["a", "b", "c"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# ----------------------------------------------------------------------------- D3, D12: one --out


def test_a_second_extract_into_a_locked_out_is_refused_naming_the_first(videos, weights, tmp_path):
    out = tmp_path / "f.h5"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
         " fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'%d\\n' % os.getpid()); print('ready', flush=True);"
         " time.sleep(120)", str(tmp_path / ".f.h5.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        r = run(["extract", videos, "--out", out, "--weights", weights])
        assert_one_error(r, f"--out {out} is being written by process {holder.pid}, another fsan extract")
        assert not out.exists() and not (tmp_path / ".f.h5.parts").exists()
    finally:
        holder.kill()
        holder.wait()
    r = run(["extract", videos / "a.mp4", "--out", out, "--weights", weights])  # its lock is gone with it
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5"]


def test_two_extracts_into_one_out_lose_no_video(videos, weights, tmp_path):
    out = tmp_path / "f.h5"
    code = "import sys; from fsan_cli.app import main; sys.argv[0] = 'fsan'; main()"
    base = [sys.executable, "-c", code, "--device", "cpu", "extract", "--out", str(out), "--weights", str(weights)]
    first = subprocess.Popen([*base, str(videos / "a.mp4"), str(videos / "b.mp4")], cwd=ROOT,
                             stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    second = subprocess.Popen([*base, str(videos / "c.mp4")], cwd=ROOT, stderr=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, text=True)
    results = [(p.wait(timeout=300), p.stderr.read()) for p in (first, second)]
    for code_, err in results:
        assert "unexpected" not in err and "Traceback" not in err, err
        assert code_ == 0 or (code_ == 1 and "is being written by process" in err), err
    if any(code_ for code_, _ in results):  # the refused one, again
        again = run(["extract", videos, "--out", out, "--weights", weights])
        assert again.exit_code == 0, again.output
    with h5py.File(out, "r") as h5:
        assert sorted(h5) == ["a", "b", "c"]


def test_a_killed_runs_temporary_files_are_removed_by_the_next(videos, weights, tmp_path):
    out = tmp_path / "big.h5"
    (tmp_path / ".big.h5.62b1s7o2.tmp").write_bytes(b"\0" * 4096)  # a merge killed by -9
    (tmp_path / ".big.h5.parts").mkdir()
    (tmp_path / ".big.h5.parts" / ".0123456789abcdef0123.h5.x1y2z3w4.tmp").write_bytes(b"\0" * 64)
    (tmp_path / ".other.h5.abcdefgh.tmp").write_bytes(b"keep")  # another output's: not ours
    r = run(["extract", videos / "a.mp4", "--out", out, "--weights", weights])
    assert r.exit_code == 0, r.output
    assert f"Removed 2 temporary files an interrupted extract into {out} left" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.h5.abcdefgh.tmp", "big.h5"]


# ----------------------------------------------------------------------------- D4, D11, D17: the cache


def _damage(entry: Path, how: str, features: Path) -> None:
    if how in ("truncated", "zero", "text"):
        data = entry.read_bytes()
        entry.write_bytes({"truncated": data[: len(data) // 2], "zero": b"", "text": b"hello\n"}[how])
        return
    with h5py.File(entry, "r+") as h5:
        (key,) = list(h5)
        ds = h5[key]
        if how == "duration":
            ds.attrs["duration"] = 600.0
        elif how == "nan":
            ds[0] = np.nan
        elif how == "swapped":
            with h5py.File(features, "r") as other:
                rows = other["c"][()]
            attrs = dict(ds.attrs)
            del h5[key]
            new = h5.create_dataset(key, data=rows)
            new.attrs.update(attrs)
        elif how == "dim":
            attrs = dict(ds.attrs)
            rows = np.concatenate([ds[()], ds[()]], axis=1)
            del h5[key]
            h5.create_dataset(key, data=rows).attrs.update(attrs)


@pytest.mark.parametrize("how", ["duration", "swapped", "nan", "truncated", "zero", "text", "dim"])
def test_a_damaged_cache_entry_is_replaced(how, trained, features, videos, weights, tmp_path):
    cache = tmp_path / "cache"
    first = ground([videos / "a.mp4", QUERY, "--checkpoint", trained, "--weights", weights], cache)
    assert first.exit_code == 0, first.output
    (entry,) = (cache / "fsan" / "features").glob("*.h5")
    _damage(entry, how, features)
    again = ground([videos / "a.mp4", QUERY, "--checkpoint", trained, "--weights", weights], cache)
    assert again.exit_code == 0, again.output
    assert f"Warning: the cached features of {videos / 'a.mp4'} in {entry} are damaged (" in again.stderr
    assert "extracting them again" in again.stderr
    assert again.stdout == first.stdout
    third = ground([videos / "a.mp4", QUERY, "--checkpoint", trained], cache)  # the replaced entry
    assert third.exit_code == 0 and third.stdout == first.stdout and "(cached)" in third.stderr


def test_a_copy_of_a_video_is_answered_under_its_own_name(trained, videos, weights, tmp_path):
    cache = tmp_path / "cache"
    shutil.copy(videos / "a.mp4", tmp_path / "renamed_clip.mp4")
    r = ground([tmp_path / "renamed_clip.mp4", QUERY, "--checkpoint", trained, "--weights", weights], cache)
    assert r.exit_code == 0 and json.loads(r.stdout)["video"] == "renamed_clip", r.output
    r = ground([videos / "a.mp4", QUERY, "--checkpoint", trained], cache)  # same bytes: not extracted again
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["video"] == "a"
    (tmp_path / "q.jsonl").write_text(json.dumps({"video": "a", "query": QUERY}) + "\n", encoding="utf-8")
    r = ground([videos / "a.mp4", "--queries", tmp_path / "q.jsonl", "--checkpoint", trained], cache)
    assert r.exit_code == 0 and json.loads(r.stdout)["video"] == "a", r.output


def test_the_cache_on_a_full_disk_gives_a_fix_ground_has(trained, videos, weights, tmp_path, monkeypatch):
    h5_failing_writes(monkeypatch)
    cache = tmp_path / "cache"
    r = ground([videos / "b.mp4", QUERY, "--checkpoint", trained, "--weights", weights], cache)
    assert_one_error(r, "no space is left on the disk. Free some space on it, or set XDG_CACHE_HOME")
    assert "--out" not in r.stderr
    assert not list(cache.rglob("*.h5")) and not list(cache.rglob("*.tmp"))


def test_moved_weights_folder_of_the_checkpoint_asks_for_weights(trained, videos, tmp_path):
    ckpt = checkpoint.load(trained)
    moved = dict(ckpt, extractor={**ckpt["extractor"], "model": str(tmp_path / "gone" / "clip")})
    checkpoint.save(moved, tmp_path / "moved.pt")
    r = ground([videos / "c.mp4", QUERY, "--checkpoint", tmp_path / "moved.pt"], tmp_path / "cache")
    assert_one_error(r, f"CLIP weights in the folder {tmp_path / 'gone' / 'clip'}, which no longer exists")
    assert "Pass --weights DIR" in r.stderr and "huggingface-cli" not in r.stderr


def test_offline_without_weights_is_one_quick_error(videos, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing answers there
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    t0 = time.perf_counter()
    r = run(["extract", videos / "a.mp4", "--out", tmp_path / "f.h5"])
    assert time.perf_counter() - t0 < 15
    assert_one_error(r, "the CLIP weights openai/clip-vit-base-patch32 are not in the Hugging Face cache "
                        "and cannot be downloaded")
    assert "Retry" not in r.stderr and "huggingface-cli download openai/clip-vit-base-patch32" in r.stderr


# ----------------------------------------------------------------------------- D5: other weights


def test_features_of_other_weights_are_refused_by_ground_and_evaluate(trained, videos, other_weights, tmp_path):
    other = tmp_path / "other.h5"
    r = run(["extract", videos, "--out", other, "--weights", other_weights])
    assert r.exit_code == 0, r.output
    r = ground([other, QUERY, "--video-id", "a", "--checkpoint", trained], tmp_path / "cache")
    assert_one_error(r, f"{other}:/a holds CLIP image features of {other_weights.resolve()} (weights sha256 ")
    assert f"and the checkpoint {trained} was trained on CLIP image features of" in r.stderr
    ckpt_data = Path(load_store(trained.parents[1] / "data" / "custom").manifest["inputs"][0]["path"])
    r = run(["prepare", "--dataset", "custom", "--annotations", ckpt_data, "--features", other,
             "--data-dir", tmp_path / "d", "--clips", "4"])
    assert r.exit_code == 0, r.output
    r = run(["evaluate", "--dataset", "custom", "--data-dir", tmp_path / "d", "--split", "val",
             "--checkpoint", trained, "--metric", "miou"])
    assert_one_error(r, f"the store at {tmp_path / 'd' / 'custom'} holds CLIP image features of "
                        f"{other_weights.resolve()}")
    assert f"and the checkpoint {trained} was trained on" in r.stderr


# ----------------------------------------------------------------------------- D8: a video named features


def test_a_video_named_features_is_one_video_of_the_file(trained, videos, weights, tmp_path):
    shutil.copy(videos / "b.mp4", tmp_path / "features.mp4")
    both = tmp_path / "featname.h5"
    r = run(["extract", tmp_path / "features.mp4", videos / "a.mp4", "--out", both, "--weights", weights])
    assert r.exit_code == 0, r.output
    alone = tmp_path / "a.h5"
    assert run(["extract", videos / "a.mp4", "--out", alone, "--weights", weights]).exit_code == 0
    asked = ground([both, QUERY, "--video-id", "a", "--checkpoint", trained], tmp_path / "c")
    assert asked.exit_code == 0, asked.output
    assert asked.stdout == ground([alone, QUERY, "--checkpoint", trained], tmp_path / "c").stdout
    r = ground([both, QUERY, "--checkpoint", trained], tmp_path / "c")
    assert_one_error(r, f"{both} holds 2 videos")


# ----------------------------------------------------------------------------- D10: truncated videos


def test_a_truncated_video_is_reported_at_extraction_and_at_prepare(weights, tmp_path):
    whole = make_video(tmp_path / "whole.mkv", frames=200, rate=10, size=(64, 48))
    data = whole.read_bytes()
    (tmp_path / "trunc.mkv").write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "t.h5"
    r = run(["extract", tmp_path / "trunc.mkv", "--out", out, "--weights", weights, "--json"])
    assert r.exit_code == 0, r.output
    assert f"Warning: {tmp_path / 'trunc.mkv'} looks truncated: its container says 20 s" in r.stderr
    with h5py.File(out, "r") as h5:
        decoded = float(h5["trunc"].attrs["duration"])
        assert decoded < 15 and h5["trunc"].attrs["container_duration"] == pytest.approx(20.0, abs=0.2)
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps({"video": "trunc", "duration": 20, "query": q, "times": [1, 5],
                                       "split": "train"}) + "\n" for q in ("a man", "a dog")), encoding="utf-8")
    r = run(["prepare", "--dataset", "custom", "--annotations", ann, "--features", out,
             "--data-dir", tmp_path / "d", "--val-share", "0"])
    assert r.exit_code == 0, r.output
    assert f"trunc: 20 s annotated, features of {decoded:g} s" in r.stderr, r.stderr


# ----------------------------------------------------------------------------- D14: damaged records, weights


@pytest.mark.parametrize("record", [{}, "no fps", {"fps": "fast"}, {"fps": 0}, [1, 2]])
def test_a_damaged_extractor_record_in_a_checkpoint_is_one_error(record, trained, videos, weights, tmp_path):
    ckpt = checkpoint.load(trained)
    if record == "no fps":
        record = {k: v for k, v in ckpt["extractor"].items() if k != "fps"}
    elif isinstance(record, dict) and record:
        record = {**ckpt["extractor"], **record}
    checkpoint.save(dict(ckpt, extractor=record), tmp_path / "rec.pt")
    r = ground([videos / "a.mp4", QUERY, "--checkpoint", tmp_path / "rec.pt", "--weights", weights],
               tmp_path / "cache")
    assert_one_error(r, f"the checkpoint {tmp_path / 'rec.pt'} holds a damaged extractor record (")


def test_a_damaged_extractor_attribute_in_a_file_is_one_error(trained, features, videos, weights, tmp_path):
    bad = tmp_path / "bad.h5"
    shutil.copy(features, bad)
    with h5py.File(bad, "r+") as h5:
        h5["a"].attrs["extractor_mean"] = "abc"
    shutil.copy(videos / "a.mp4", tmp_path / "new.mp4")
    r = run(["extract", tmp_path / "new.mp4", "--out", bad, "--weights", weights])
    assert_one_error(r, f"{bad}:/a holds a damaged extractor record (mean is 'abc', not 3 channel values)")
    ann = Path(load_store(trained.parents[1] / "data" / "custom").manifest["inputs"][0]["path"])
    r = run(["prepare", "--dataset", "custom", "--annotations", ann, "--features", bad,
             "--data-dir", tmp_path / "d", "--clips", "4"])
    assert_one_error(r, f"{bad}:/a holds a damaged extractor record (mean is 'abc'")


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("case", ["junk_safetensors", "pickle_bin"])
def test_weights_that_cannot_be_loaded_are_one_error(case, videos, weights, tmp_path):
    folder = tmp_path / "w"
    folder.mkdir()
    shutil.copy(weights / "config.json", folder / "config.json")
    marker = tmp_path / "PWNED"
    if case == "junk_safetensors":
        (folder / "model.safetensors").write_bytes(b"\x01\x02junk")
    else:
        torch.save({"x": Payload(marker)}, folder / "pytorch_model.bin")
        assert zipfile.is_zipfile(folder / "pytorch_model.bin") and pickle  # a torch zip with a payload
    r = run(["extract", videos / "a.mp4", "--out", tmp_path / "f.h5", "--weights", folder])
    assert_one_error(r, "cannot be loaded (")
    assert "runs no code from them" in r.stderr
    assert not marker.exists() and not (tmp_path / "f.h5").exists()
