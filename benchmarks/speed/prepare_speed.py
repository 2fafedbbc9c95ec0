"""How fast `fsan prepare` reads an ActivityNet-layout feature file, against the disk itself.

Builds `sub_activitynet_v1-3.c3d.hdf5`-layout features of realistic size (by default 14,950
videos of about 120 s at 3.75 rows per second, 500-d float32: about 13 GB) plus matching
train / val_1 / val_2 annotation files, then measures, with the file evicted from the page cache
before each run (cold) and again with it cached (warm):

- `disk`: a plain sequential read of the file in 16 MB blocks (the ceiling);
- `prepare`: `fsan prepare --dataset activitynet` on it (the feature pass alone, and end to end).

    python -m benchmarks.speed.prepare_speed --scale 0.1        # 1,495 videos, about 1.3 GB
    python -m benchmarks.speed.prepare_speed --dir /data/bench  # full size on another disk

Prints a table on stderr and one JSON object on stdout, with a "record" of how it was made
(benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from benchmarks.record import record

ROWS_PER_SECOND = 3.75


def build(folder: Path, videos: int, seconds: float, dim: int, seed: int) -> Path:
    """Feature file + annotations in the official layouts; returns the feature file."""
    rng = np.random.default_rng(seed)
    durations = rng.uniform(0.5 * seconds, 1.5 * seconds, videos)
    pool = rng.standard_normal((1 << 16, dim), dtype=np.float32)  # reused: generation is not timed
    path = folder / "sub_activitynet_v1-3.c3d.hdf5"
    ids = [f"v_{i:011d}" for i in range(videos)]
    with h5py.File(path, "w") as h5:
        for vid, duration in zip(ids, durations, strict=True):
            rows = max(1, int(duration * ROWS_PER_SECOND))
            start = int(rng.integers(0, len(pool) - rows))
            h5.create_group(vid).create_dataset("c3d_features", data=pool[start : start + rows])
    cut = [0, int(0.67 * videos), int(0.84 * videos), videos]
    for name, lo, hi in zip(("train", "val_1", "val_2"), cut, cut[1:], strict=False):
        ann = {
            vid: {
                "duration": round(float(durations[i]), 2),
                "timestamps": [[0.0, round(float(durations[i]) / 2, 2)]],
                "sentences": ["A person is doing something in the video."],
            }
            for i, vid in enumerate(ids[lo:hi], lo)
        }
        (folder / f"{name}.json").write_text(json.dumps(ann))
    return path


def evict(path: Path) -> bool:
    """Drop the file from the page cache (no root needed); False where the OS cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def disk_read(path: Path) -> float:
    """MB/s of a plain sequential read in 16 MB blocks."""
    buf = bytearray(16 << 20)
    total, started = 0, time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            total += n
    return total / 1e6 / (time.perf_counter() - started)


def run_prepare(folder: Path, features: Path, glove: str | None) -> dict:
    from fsan_cli.data.prepare import PrepareOptions, prepare_dataset

    opts = PrepareOptions(
        dataset="activitynet",
        annotations=folder,
        features=features,
        out=folder / "store",
        clips=64,
        glove=glove,
        overwrite=True,
        progress=False,
    )
    started = time.perf_counter()
    summary = prepare_dataset(opts)
    seconds = time.perf_counter() - started
    size = features.stat().st_size / 1e6
    return {
        "seconds": summary["seconds"],
        "feature_pass_mb_per_s": summary["read_mb_per_s"],
        "end_to_end_s": round(seconds, 2),
        "end_to_end_mb_per_s": round(size / seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=14950)
    ap.add_argument("--seconds", type=float, default=120.0, help="mean video length")
    ap.add_argument("--dim", type=int, default=500)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply --videos by this")
    ap.add_argument("--dir", type=Path, default=None, help="where to build (default: a temp dir)")
    ap.add_argument("--glove", default=None, help="word vectors (default: GloVe 6B 50d)")
    ap.add_argument("--repeat", type=int, default=2, help="cold runs of each measurement")
    ap.add_argument("--keep", action="store_true", help="keep the built files")
    args = ap.parse_args()

    videos = max(3, int(args.videos * args.scale))
    tmp = tempfile.TemporaryDirectory(prefix="fsan-bench-", dir=args.dir)
    folder = Path(tmp.name)
    t0 = time.perf_counter()
    features = build(folder, videos, args.seconds, args.dim, seed=0)
    size_mb = features.stat().st_size / 1e6
    print(
        f"built {videos} videos, {size_mb:.0f} MB in {time.perf_counter() - t0:.0f} s at {folder}",
        file=sys.stderr,
    )

    result: dict = {"videos": videos, "file_mb": round(size_mb, 1), "dim": args.dim}
    for state in ("cold", "warm"):
        disk, prep = [], []
        for _ in range(args.repeat):
            if state == "cold" and not evict(features):
                state = "warm (could not evict the page cache)"
            disk.append(disk_read(features))
            if state == "cold":
                evict(features)
            prep.append(run_prepare(folder, features, args.glove))
        best = max(prep, key=lambda r: r["feature_pass_mb_per_s"])
        result[state] = {"disk_mb_per_s": round(max(disk), 1), **best}
        print(
            f"{state:>5}: disk {max(disk):8.1f} MB/s | prepare feature pass "
            f"{best['feature_pass_mb_per_s']:8.1f} MB/s | end to end {best['end_to_end_s']:.1f} s "
            f"({best['end_to_end_mb_per_s']:.1f} MB/s)",
            file=sys.stderr,
        )
    result["record"] = record(__spec__.name)
    print(json.dumps(result))
    if args.keep:
        print(f"kept {folder}", file=sys.stderr)
        tmp._finalizer.detach()  # noqa: SLF001 - keep the folder


if __name__ == "__main__":
    main()
