"""Does grounding hold on a long video? The semi-real ActivityNet-like (or Charades-like) test
videos (fsan_cli/data/semisynthetic.py, built by benchmarks/quality/sizes.py) laid end to end, K per
long video, every sentence asked of the long video it is in (its times shifted by the videos
before it). R@1 and R@5 at IoU 0.1/0.3/0.5 and mIoU by K:

- pooled: the whole long video pooled into the model's N_v clips (the path without windows),
  with the span prior and without it;
- windows: fsan_cli/predict/windows.py as shipped (windows of the trained range ranked by word
  coverage, their candidates taking turns in the top-k, the span prior inside each window), and
  without the span prior; where only some of the K's long videos are longer than the trained
  range (K = 2, 5 on ActivityNet-like spans), "windows where longer than the trained range" is
  what fsan answers: those in windows, the others pooled;
- the alternatives it was chosen over: windows ranked by S(V, S) or by SC, the cut rule off, the
  best window's top-k first; and a diagnosis that reads the truth (the window holding the
  moment first): what a perfect choice of window would give;
- "part": how often the top answer's middle lies in the right part (the sentence's own video);
- with --diagnose, two readings of the truth: each long video cut at its parts' true boundaries
  (each part pooled as its video alone), its parts ranked by word coverage, and ranked by the
  generator's own hidden vectors (a matched filter that knows how the features were made): the
  second bounds how often any ranking picks the right part in this data.

Choose on val (`--split val`: the val videos laid end to end), report test.

K = 1 is the single-video figure (no test video is longer than the longest train video, so it is
today's path). The raw rows come from the benchmark's own feature file.

    python -m benchmarks.quality.long_videos --work /tmp/sem31/activitynet \
        --checkpoint /tmp/sem31/activitynet/runs/small-seed0/best.pt --ks 1,2,5,10,20
    python -m benchmarks.quality.long_videos --work /tmp/semch/charades \
        --checkpoint /tmp/semch/charades/runs/small-seed0/best.pt --ks 1,10 --diagnose
    ... --speed   # a 2-hour video (14,400 rows) with 100 queries: queries/s and peak memory
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from benchmarks.record import header, record
from fsan_cli.data import semisynthetic
from fsan_cli.data.store import load_store
from fsan_cli.predict import windows
from fsan_cli.predict.predictor import Predictor

IOUS = {"activitynet": (0.1, 0.3, 0.5), "charades": (0.3, 0.5, 0.7)}  # each benchmark's protocol
FEATURES = {"activitynet": "sub_activitynet_v1-3.c3d.hdf5", "charades": "features.hdf5"}  # as semisynthetic writes
VIDEOS = {"activitynet": semisynthetic.activitynet_videos, "charades": semisynthetic.charades_videos}


def read_rows(fh: h5py.File, video: str) -> np.ndarray:
    """A video's rows in the benchmark's file: ActivityNet's C3D layout (a group per video) or a
    dataset per video (Charades)."""
    x = fh[video]
    return (x["c3d_features"] if isinstance(x, h5py.Group) else x)[()]


def scores(seconds: np.ndarray, truth: np.ndarray, ious: tuple[float, ...] = IOUS["activitynet"]) -> dict:
    """seconds (Q, k, 2) ranked answers, truth (Q, 2) -> R@1, R@5 at `ious` and mIoU (percent)."""
    inter = (np.minimum(seconds[..., 1], truth[:, None, 1]) - np.maximum(seconds[..., 0], truth[:, None, 0])).clip(0)
    union = np.maximum(seconds[..., 1], truth[:, None, 1]) - np.minimum(seconds[..., 0], truth[:, None, 0])
    iou = inter / np.where(union > 0, union, 1)
    out = {f"r@{k},iou={t}": round(100 * float((iou[:, :k] >= t).any(1).mean()), 1) for k in (1, 5) for t in ious}
    out["miou"] = round(100 * float(iou[:, 0].mean()), 1)
    return out


def laid(store, split: str, k: int, seed: int) -> list[tuple[list[tuple], float]]:
    """The split's videos in a seeded order, k to a long video (the last few left out): per long
    video, its parts as (video, its queries, offset and duration in seconds), and its seconds."""
    queries = store.split(split)
    names = sorted({q.video for q in queries})
    np.random.default_rng(seed).shuffle(names)
    index = store.video_index
    by_video: dict[str, list] = {}
    for q in queries:
        by_video.setdefault(q.video, []).append(q)
    out = []
    for g in range(0, len(names) - len(names) % k, k):
        parts, offset = [], 0.0
        for v in names[g: g + k]:
            d = float(store.videos[index[v]]["duration"])
            parts.append((v, by_video[v], offset, d))
            offset += d
        out.append((parts, offset))
    return out


def long_videos(store, h5: Path, k: int, seed: int, split: str = "test"):
    """Test videos in a seeded order, K to a long video: [(rows, duration)], and per query its
    long video, text, shifted truth and its part's [start, end)."""
    videos, video, texts, truth, part = [], [], [], [], []
    with h5py.File(h5, "r") as fh:
        for parts, seconds in laid(store, split, k, seed):
            for _, queries, offset, d in parts:
                for q in queries:
                    video.append(len(videos))
                    texts.append(q.query)
                    truth.append([q.times[0][0] + offset, q.times[0][1] + offset])
                    part.append([offset, offset + d])
            videos.append((np.concatenate([read_rows(fh, v) for v, *_ in parts]), seconds))
    return videos, np.array(video), texts, np.array(truth), np.array(part)


def oracle(predictor: Predictor, long, video: np.ndarray, texts, truth: np.ndarray) -> np.ndarray:
    """A window score for diagnosis only (it reads the truth): the windows that hold the whole
    true moment first, then by word coverage; how much window choice leaves to gain."""
    query, window, _ = windows.pairs(long.video, video)
    features = torch.from_numpy(np.ascontiguousarray(long.clips, np.float32))
    out = predictor.predict(features, window, predictor.encode(texts)[query], 1, predictor.nms, coverage=True)
    a, b = long.seconds[window, 0], long.seconds[window, 1]
    holds = (a <= truth[query, 0]) & (truth[query, 1] <= b)
    return (out.coverage + 100 * holds).astype(np.float32)


def true_parts(predictor: Predictor, store, h5: Path, k: int, seed: int, split: str) -> windows.Long:
    """Each long video cut at its parts' true boundaries, a window per part pooled as that video
    alone is (diagnosis only: it reads the truth)."""
    clips, owner, seconds = [], [], []
    with h5py.File(h5, "r") as fh:
        for i, (parts, _) in enumerate(laid(store, split, k, seed)):
            for v, _, offset, d in parts:
                clips.append(predictor.video_clips(read_rows(fh, v), v))
                owner.append(i)
                seconds.append([offset, offset + d])
    return windows.Long(np.stack(clips), np.array(owner, np.int64), np.array(seconds))


def generator_scores(work: Path, store, h5: Path, parts: windows.Long, k: int, seed: int, split: str,
                     video: np.ndarray) -> np.ndarray:
    """(P,) per (query, part) pair in `windows.pairs` order: the highest cosine between the part's
    rows and the hidden vector the generator added for the query's sentence. A reader of the
    features that knows how they were made (a matched filter; diagnosis only): how well the
    sentences can be told apart in this data at all."""
    built = json.loads((work / "built.json").read_text())
    videos = VIDEOS[built["dataset"]](work / f"{built['dataset']}-{built['size']}" / "annotations")
    hidden, _ = semisynthetic.hidden_vectors(videos, int(built["dim"]), int(built["seed"]))
    vectors, names = [], []
    for item in laid(store, split, k, seed):
        for v, queries, _, _ in item[0]:
            names.append(v)
            captions = [" ".join(c.split()) for c in videos[v]["captions"]]  # as the store keeps them
            vectors += [hidden[(v, captions.index(" ".join(q.query.split())))] for q in queries]
    query, window, _ = windows.pairs(parts.video, video)
    out = np.zeros(len(query), np.float32)
    with h5py.File(h5, "r") as fh:
        for w, v in enumerate(names):  # a loop over the parts read from the file (diagnosis)
            x = read_rows(fh, v)
            x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-6)
            at = np.flatnonzero(window == w)
            out[at] = (np.stack([vectors[q] for q in query[at]]) @ x.T).max(1)
    return out


def run_k(predictor: Predictor, store, h5: Path, k: int, seed: int, top_k: int = 5,
          split: str = "test", work: Path | None = None) -> dict:
    videos, video, texts, truth, part = long_videos(store, h5, k, seed, split)
    rows = [r for r, _ in videos]
    seconds = [d for _, d in videos]
    names = [f"long{i}" for i in range(len(videos))]
    durations = np.array([seconds[v] for v in video])
    pooled = np.stack([predictor.video_clips(r, n) for r, n in zip(rows, names, strict=True)])
    t0 = time.perf_counter()
    whole = predictor.answer(torch.from_numpy(pooled), video, durations, texts, top_k)
    t_pooled = time.perf_counter() - t0
    out = {"k": k, "split": split, "long_videos": len(videos), "queries": len(texts),
           "minutes": round(float(np.mean(seconds)) / 60, 1)}
    ways = {"pooled": whole.seconds}
    if whole.plain_seconds is not None:
        ways["pooled, no span prior"] = whole.plain_seconds
    windowing = windows.Windowing.of(predictor.data)
    is_long, long = windows.cut(predictor, rows, seconds, names, windowing)
    out["windowed_videos"] = int(np.sum(is_long))
    t0 = time.perf_counter()
    if long is not None and not np.all(is_long):  # as fsan answers them: the long ones in windows
        mixed = windows.answer(predictor, pooled, long, np.asarray(is_long, bool), video, durations, texts, top_k)
        ways["windows where longer than the trained range"] = mixed.seconds
        out["windows_s"] = round(time.perf_counter() - t0, 1)
    if long is not None and np.all(is_long):
        win, _ = windows.answer_long(predictor, long, video, texts, top_k, prior=True)
        ways["windows"] = win.seconds
        if win.plain_seconds is not None:
            ways["windows, no span prior"] = win.plain_seconds
        out["windows_s"] = round(time.perf_counter() - t0, 1)
        others = {"windows ranked by S(V, S)": {"rank_by": "match"}, "windows ranked by SC": {"rank_by": "sc"},
                  "windows, cuts ignored": {"cuts": False}, "windows, best window's top-k first": {"interleave": False},
                  "windows, oracle choice (diagnosis)": {"rank_by": oracle(predictor, long, video, texts, truth)}}
        for way, kwargs in others.items():
            ways[way] = windows.answer_long(predictor, long, video, texts, top_k, prior=True, **kwargs)[0].seconds
        if work is not None:  # diagnosis: the true boundaries, and how far the sentences can be told apart
            parts = true_parts(predictor, store, h5, k, seed, split)
            generator = generator_scores(work, store, h5, parts, k, seed, split, video)
            for way, rank_by in {"true parts, ranked by word coverage (diagnosis)": windows.RANK_BY,
                                 "true parts, ranked by the generator's vectors (diagnosis)": generator}.items():
                ways[way] = windows.answer_long(predictor, parts, video, texts, top_k, prior=True,
                                                rank_by=rank_by)[0].seconds
    out["pooled_s"] = round(t_pooled, 1)
    for way, sec in ways.items():
        mid = sec[:, 0].mean(1)
        out[way] = {**scores(sec, truth, IOUS[store.manifest["dataset"]]), "part": round(100 * float(((mid >= part[:, 0]) & (mid < part[:, 1])).mean()), 1)}
    return out


def speed(predictor: Predictor, store, h5: Path, queries: int = 100, rows: int = 14_400,
          seconds: float = 7_200.0) -> dict:
    """One 2-hour video (test videos' rows repeated to `rows`) and `queries` test sentences."""
    test = store.split("test")
    with h5py.File(h5, "r") as fh:
        parts, n = [], 0
        for v in sorted({q.video for q in test}):
            parts.append(read_rows(fh, v))
            n += len(parts[-1])
            if n >= rows:
                break
    x = np.concatenate(parts)[:rows]
    texts = [q.query for q in test[:queries]]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    answers, _ = windows.ground(predictor, [x], ["two-hours"], [seconds], np.zeros(len(texts), np.int64),
                                np.full(len(texts), seconds), texts, 5)
    took = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    spans = windows.Windowing.of(predictor.data).spans(len(x), seconds)
    return {"rows": rows, "seconds": seconds, "queries": len(texts), "windows": len(spans),
            "pairs": len(spans) * len(texts), "wall_s": round(took, 1),
            "queries_per_s": round(len(texts) / took, 2), "peak_rss_mb": round(peak / 1024, 0),
            "rss_growth_mb": round((peak - before) / 1024, 0), "threads": torch.get_num_threads()}


def table(rows: list[dict]) -> str:
    """Markdown of benchmark rows: by K and way, each metric's mean +- sample sd over the checkpoints."""
    from fsan_cli.evaluate.metrics import mean_sd

    first = next(v for v in rows[0].values() if isinstance(v, dict) and "miou" in v)
    metrics = [m for m in first if m.startswith("r@1")] + [m for m in first if m.startswith("r@5")] + ["miou", "part"]
    lines = [f"| K | minutes | way | runs | {' | '.join(metrics)} |", "|" + "---|" * (len(metrics) + 4)]
    for k in sorted({r["k"] for r in rows}):
        at = [r for r in rows if r["k"] == k]
        ways = [w for w in at[0] if isinstance(at[0][w], dict) and w != "record"]
        for way in ways:
            cells = []
            for m in metrics:
                mean, sd = mean_sd(r[way][m] for r in at if way in r)
                cells.append(f"{mean:.1f}" + (f" ± {sd:.1f}" if sd is not None else ""))
            lines.append(f"| {k} | {at[0]['minutes']} | {way} | {sum(way in r for r in at)} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True,
                    help="the sizes benchmark's WORK/activitynet or WORK/charades (its built.json says which)")
    ap.add_argument("--checkpoint", type=Path, action="append", default=[], help="repeatable: one per seed")
    ap.add_argument("--ks", default="1,2,5,10,20")
    ap.add_argument("--seed", type=int, default=0, help="the order in which test videos are laid end to end")
    ap.add_argument("--split", choices=["val", "test"], default="test",
                    help="whose videos are laid end to end (choose settings on val, report test)")
    ap.add_argument("--diagnose", action="store_true",
                    help="also the true parts as windows, ranked by word coverage and by the generator's own "
                         "vectors (reads the truth): how much a better cut or a better ranking could give")
    ap.add_argument("--speed", action="store_true", help="only the 2-hour video's queries/s and memory")
    ap.add_argument("--out", type=Path, help="append the rows (JSON lines) here")
    ap.add_argument("--window", choices=["p50", "p90", "max"], help="windows of this train duration (default p90)")
    ap.add_argument("--stride", type=float, help="windows this fraction of a window apart (default 0.5)")
    ap.add_argument("--table", type=Path, metavar="JSONL",
                    help="measure nothing: a markdown table (mean +- sd over checkpoints) of these rows")
    args = ap.parse_args()
    if args.window:
        windows.WINDOW_PERCENTILE = args.window
    if args.stride:
        windows.STRIDE = args.stride
    if args.table:
        print(table([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return
    torch.set_num_threads(1)
    built = json.loads((args.work / "built.json").read_text())
    store = load_store(args.work / "data" / built["dataset"])
    h5 = args.work / f"{built['dataset']}-{built['size']}" / FEATURES[built["dataset"]]
    made = record(__spec__.name)
    print(header(__spec__.name))
    rows = []
    for ckpt in args.checkpoint:
        predictor = Predictor.load(ckpt, torch.device("cpu"))
        if args.speed:
            rows.append({"checkpoint": str(ckpt), "speed": speed(predictor, store, h5), "record": made})
            print(json.dumps(rows[-1]["speed"]), flush=True)
            continue
        for k in (int(x) for x in args.ks.split(",")):
            row = {"checkpoint": str(ckpt), **run_k(predictor, store, h5, k, args.seed, split=args.split,
                                                    work=args.work if args.diagnose else None),
                   "record": made}
            rows.append(row)
            print(json.dumps({x: y for x, y in row.items() if x != "record"}), flush=True)
    if args.out:
        with args.out.open("a") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
        print(f"(rows appended to {args.out})", file=sys.stderr)


if __name__ == "__main__":
    main()
