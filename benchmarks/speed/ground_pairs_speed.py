"""How close `fsan ground FEATURES --queries pairs.jsonl` comes to the model's own rate.

    python -m benchmarks.speed.ground_pairs_speed                  # paper config, 2,000 pairs, 100 videos
    python -m benchmarks.speed.ground_pairs_speed --set model.hidden=128 --set model.layers=2 \
        --set model.heads=4 --set data.clips=32 --pairs 500 --videos 50

Writes an untrained checkpoint of the chosen config (as benchmarks/speed/ground_speed.py does),
an official-layout feature file of `--videos` videos (a group per video holding `c3d_features`,
T = 450 rows of 500-d, no durations) and `--pairs` JSON lines `{"video", "query", "duration",
"annotation_id"}`. Then it times:

- the model alone: `Predictor.ground` on the same pairs in this process, after a warm-up
  (checkpoint loaded, videos read and pooled beforehand: what no command can avoid);
- the whole command in a new process: interpreter start, `import torch`, checkpoint load,
  reading and checking the lines, reading and pooling the videos, grounding, JSON out.

Issue 18's target: the whole command at least 90% of the model-only rate. Both at the same
`--precision` (default auto: bf16 on CPUs with AMX).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.record import header
from benchmarks.speed.ground_speed import ROOT, WORDS, write_checkpoint


def write_files(folder: Path, videos: int, pairs: int) -> tuple[Path, Path]:
    import h5py

    rng = np.random.default_rng(3)
    feats, lines = folder / "feats.hdf5", folder / "pairs.jsonl"
    with h5py.File(feats, "w") as h5:
        for v in range(videos):
            rows = rng.normal(size=(450, 500)).astype(np.float32)
            h5.create_group(f"v_{v:05d}").create_dataset("c3d_features", data=rows)
    with open(lines, "w", encoding="utf-8") as fh:
        for i in range(pairs):
            query = " ".join(rng.choice(WORDS, int(rng.integers(6, 16))))
            fh.write(json.dumps({"video": f"v_{i % videos:05d}", "query": query,
                                 "duration": 120.0, "annotation_id": i}) + "\n")
    return feats, lines


def model_only(ckpt: Path, feats: Path, lines: Path, device: str, precision: str, repeats: int) -> list[float]:
    """Seconds of `Predictor.ground` alone on every pair (inputs prepared beforehand)."""
    import torch

    from fsan_cli.ground import grounding
    from fsan_cli.ground.requests import read_requests
    from fsan_cli.predict.predictor import Predictor

    predictor = Predictor.load(ckpt, torch.device(device), precision)
    requests = read_requests([], lines)
    videos, keys = grounding.read_asked(feats, requests)
    order = list(videos)
    clips = np.stack([predictor.video_clips(videos[k].rows, videos[k].video) for k in order])
    index = np.array([order.index(k) for k in keys], np.int64)
    seconds = np.full(len(requests), 120.0)
    texts = [r.query for r in requests]
    predictor.ground(clips, index[:64], seconds[:64], texts[:64], 5)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predictor.ground(clips, index, seconds, texts, 5)
        times.append(time.perf_counter() - t0)
    return times


def whole_command(ckpt: Path, feats: Path, lines: Path, device: str, precision: str) -> float:
    cmd = [sys.executable, "-m", "fsan_cli", "-q", "--device", device, "ground", str(feats),
           "--queries", str(lines), "--checkpoint", str(ckpt), "--json", "--precision", precision]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    elapsed = time.perf_counter() - t0
    assert out.stdout.count("\n") == len(lines.read_text(encoding="utf-8").splitlines())
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="setting override key=value")
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--videos", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    args = ap.parse_args()
    print(header(__spec__.name), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "best.pt"
        clips = write_checkpoint(ckpt, args.sets, 10_000, 300, 500)
        feats, lines = write_files(Path(tmp), args.videos, args.pairs)
        model = model_only(ckpt, feats, lines, args.device, args.precision, args.repeats)
        whole = [whole_command(ckpt, feats, lines, args.device, args.precision) for _ in range(args.repeats)]
    m_rate, w_rate = args.pairs / statistics.median(model), args.pairs / statistics.median(whole)
    print(f"config: {' '.join(args.sets) or 'paper (d 512, 6 layers, 8 heads)'}, N_v {clips}, "
          f"{args.pairs} pairs over {args.videos} videos, device {args.device}, precision "
          f"{args.precision}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"model only (Predictor.ground): median {statistics.median(model):.2f} s = {m_rate:.0f} queries/s "
          f"(runs: {', '.join(f'{t:.2f}' for t in model)} s)")
    print(f"whole command: median {statistics.median(whole):.2f} s = {w_rate:.0f} queries/s "
          f"(runs: {', '.join(f'{t:.2f}' for t in whole)} s)")
    print(f"whole command / model only: {100 * w_rate / m_rate:.1f}% (target >= 90%)")


if __name__ == "__main__":
    main()
