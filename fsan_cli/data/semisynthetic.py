"""Semi-synthetic data: the REAL annotation files (ActivityNet-Captions, Charades-STA) with
clip features synthesised from each caption's words inside its real span, written in the official
feature layouts and read through `fsan prepare` exactly like real data. The answer key is the
real timestamps, so the spans, their lengths, overlaps and the fixed-segment prior are the
benchmark's own.

Per video: rows at `rows_per_second`, each row = per-video background + noise + the sum, over
the captions whose real span covers the row, of a fixed hidden random projection of the mean
GloVe vector of the caption's content words. Size "small" keeps a CPU-sized subset of videos;
"full" keeps them all. The benchmarks that use it (build, prepare, train, sweep settings):

    python -m benchmarks.quality.semisynthetic --help
    python -m benchmarks.quality.semisynthetic_sweep --help
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np

from fsan_cli.core.text import load_word_vectors, tokenize

STOP = set(["a", "an", "the", "and", "or", "of", "to", "in", "on", "at", "with", "his", "her", "their", "its", "is", "are", "was", "were", "be", "by", "for", "from", "as", "it", "he", "she", "they", "them", "this", "that", "then", "while", "who", "which", "into", "up", "down", "out", "over"])
SIZES = {"small": {"train": 1500, "val": 250, "test": 250}, "full": None}


def caption_vectors(captions: list[str], dim_out: int, rng: np.random.Generator) -> np.ndarray:
    # tokenizer 1 (clitics kept whole) as when the measured semi-real features were made: the same features
    toks = [[w for w in tokenize(c, 1) if w not in STOP] for c in captions]
    wv = load_word_vectors(None, needed={w for t in toks for w in t})
    index = wv.index()
    unit = wv.vectors / np.linalg.norm(wv.vectors, axis=1, keepdims=True).clip(1e-6)
    hidden = rng.normal(0, 1 / np.sqrt(wv.dim), (wv.dim, dim_out))
    out = np.zeros((len(captions), dim_out), np.float32)
    for i, t in enumerate(toks):
        ids = [index[w] for w in t if w in index]
        if ids:
            x = unit[ids].mean(0) @ hidden
            out[i] = x / np.linalg.norm(x)
    return out


def hidden_vectors(videos: dict[str, dict], dim: int, seed: int
                   ) -> tuple[dict[tuple[str, int], np.ndarray], np.random.Generator]:
    """Each (video, caption number)'s hidden vector, the one added to the rows of its span, and
    the generator, drawn on from there by `synthesise`. A benchmark's diagnosis reads them to
    ask how well the sentences can be told apart at all (benchmarks/quality/long_videos.py)."""
    rng = np.random.default_rng(seed)
    flat = [(v, k) for v in sorted(videos) for k in range(len(videos[v]["captions"]))]
    vecs = caption_vectors([videos[v]["captions"][k] for v, k in flat], dim, rng)
    return dict(zip(flat, vecs, strict=True)), rng


def synthesise(videos: dict[str, dict], dim: int, rows_per_s: float, noise: float, seed: int):
    """{video: {duration, spans [(s, e)], captions}} -> {video: (T, dim) float32}."""
    hidden, rng = hidden_vectors(videos, dim, seed)
    names = sorted(videos)
    feats = {}
    for v in names:
        info = videos[v]
        t_rows = max(4, int(round(info["duration"] * rows_per_s)))
        centres = (np.arange(t_rows) + 0.5) / t_rows * info["duration"]
        x = rng.normal(0, 1 / np.sqrt(dim), dim)[None].repeat(t_rows, 0)
        x += rng.normal(0, noise / np.sqrt(dim), (t_rows, dim))
        for k, (s, e) in enumerate(info["spans"]):
            inside = (centres >= s) & (centres < e)
            if not inside.any():
                inside[np.argmin(np.abs(centres - (s + e) / 2))] = True
            x[inside] += hidden[(v, k)]
        feats[v] = x.astype(np.float32)
    return feats


ACTIVITYNET_FILES = {"train": "train.json", "val": "val_1.json", "test": "val_2.json"}


def activitynet_videos(ann_dir: Path) -> dict[str, dict]:
    """The ActivityNet-Captions files kept in ANN_DIR -> {video: {duration, captions, spans}}, the
    input of `synthesise`: val_1 and val_2 annotate mostly the same videos, and both's events are
    kept."""
    videos: dict[str, dict] = {}
    for fname in ACTIVITYNET_FILES.values():
        data = json.loads((ann_dir / fname).read_text())
        for v in sorted(data):
            d = data[v]
            info = videos.setdefault(v, {"duration": d["duration"], "captions": [], "spans": []})
            info["captions"] += d["sentences"]
            info["spans"] += [(max(0, s), min(d["duration"], e)) for s, e in d["timestamps"]]
    return videos


def build_activitynet(src: Path, dst: Path, size: str, args) -> Path:
    """train.json / val_1.json / val_2.json and sub_activitynet_v1-3.c3d.hdf5 under DST; args:
    dim, rows_per_second, noise, seed. Returns the feature file."""
    limits = SIZES[size]
    ann_dir = dst / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    for split, fname in ACTIVITYNET_FILES.items():
        data = json.loads((src / fname).read_text())
        keep = sorted(data)[: limits[split]] if limits else sorted(data)
        (ann_dir / fname).write_text(json.dumps({v: data[v] for v in keep}))
    feats = synthesise(activitynet_videos(ann_dir), args.dim, args.rows_per_second, args.noise, args.seed)
    path = dst / "sub_activitynet_v1-3.c3d.hdf5"
    with h5py.File(path, "w") as fh:
        for v, x in feats.items():
            fh.create_group(v).create_dataset("c3d_features", data=x)
    return path


def _sta_lines(path: Path) -> dict[str, list[str]]:
    by_video: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            by_video.setdefault(line.split()[0], []).append(line)
    return by_video


def charades_videos(ann_dir: Path) -> dict[str, dict]:
    """The Charades-STA files kept in ANN_DIR (lengths from Charades_v1_*.csv) -> {video:
    {duration, captions, spans}}, the input of `synthesise`."""
    durations = {}
    for split in ("train", "test"):
        with open(ann_dir / f"Charades_v1_{split}.csv", newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                durations[row["id"]] = float(row["length"])
    videos: dict[str, dict] = {}
    for split in ("train", "test"):
        for v, lines in _sta_lines(ann_dir / f"charades_sta_{split}.txt").items():
            d = durations[v]
            info = videos.setdefault(v, {"duration": d, "captions": [], "spans": []})
            for ln in lines:
                head, sentence = ln.split("##", 1)
                _, s, e = head.split()
                info["captions"].append(sentence)
                info["spans"].append((max(0.0, float(s)), min(d, float(e))))
    return videos


def build_charades(src: Path, dst: Path, size: str, args) -> Path:
    """Charades_v1_*.csv, charades_sta_*.txt and features.hdf5 under DST (args as
    build_activitynet). Returns the feature file."""
    limits = SIZES[size]
    ann_dir = dst / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        (ann_dir / f"Charades_v1_{split}.csv").write_bytes((src / f"Charades_v1_{split}.csv").read_bytes())
    for split, limit in (("train", limits and limits["train"]), ("test", limits and limits["test"])):
        by_video = _sta_lines(src / f"charades_sta_{split}.txt")
        keep = sorted(by_video)[:limit] if limit else sorted(by_video)
        (ann_dir / f"charades_sta_{split}.txt").write_text(
            "\n".join(ln for v in keep for ln in by_video[v]) + "\n", encoding="utf-8")
    feats = synthesise(charades_videos(ann_dir), args.dim, args.rows_per_second, args.noise, args.seed)
    path = dst / "features.hdf5"
    with h5py.File(path, "w") as fh:
        for v, x in feats.items():
            fh.create_dataset(v, data=x)
    return path


def build_and_prepare(dataset: str, annotations: Path, work: Path, size: str, dim: int = 128,
                      rows_per_second: float = 1.0, noise: float = 0.6, seed: int = 7) -> Path:
    """Write the semi-synthetic files under WORK/DATASET-SIZE and `fsan prepare` them into
    WORK/data; returns that data folder. Where WORK already holds a store built from the same
    annotation folder and options (its `built.json`), it is reused as it is: a second sweep
    started beside a running one neither rebuilds nor rewrites files the first is reading."""
    opts = SimpleNamespace(dim=dim, rows_per_second=rows_per_second, noise=noise, seed=seed)
    dst = work / f"{dataset}-{size}"
    data_dir = work / "data"
    stamp = {"dataset": dataset, "annotations": str(Path(annotations).resolve()), "size": size,
             "limits": SIZES[size], **vars(opts)}
    built = work / "built.json"
    if built.is_file() and (data_dir / dataset).is_dir() and json.loads(built.read_text()) == stamp:
        return data_dir
    built.unlink(missing_ok=True)
    build = build_activitynet if dataset == "activitynet" else build_charades
    features = build(annotations, dst, size, opts)
    subprocess.run([sys.executable, "-m", "fsan_cli", "prepare", "--dataset", dataset,
                    "--annotations", str(dst / "annotations"), "--features", str(features),
                    "--data-dir", str(data_dir), "--overwrite"], check=True)
    built.write_text(json.dumps(stamp))
    return data_dir

