"""How long scoring the 17,031 ActivityNet-Captions test (val_2) queries from a predictions file takes.

    python -m benchmarks.speed.score_speed [--shared-data ../shared/data] [--repeats 5]

Builds the val_2 queries from the real annotation file, writes 5 random moments per query to a
predictions JSONL (a temporary file), then times `read_predictions` + `metrics.score` (the work
`fsan evaluate --predictions FILE --json` does after loading the store) and, separately, the
whole command in a fresh process on a store holding only those queries. Target: under 2 s.
The first line printed, `# record: {...}`, says how the figures were made (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.record import header
from fsan_cli.data.store import Query, write_store
from fsan_cli.evaluate.baselines import random_predictions
from fsan_cli.evaluate.predictions import read_predictions, write_predictions
from fsan_cli.evaluate.scoring import score

ROOT = Path(__file__).resolve().parents[2]


def val2_queries(shared: Path) -> list[Query]:
    data = json.loads((shared / "activitynet" / "val_2.json").read_text(encoding="utf-8"))
    return [
        Query(video, sentence, float(v["duration"]), [[float(a), float(b)]])
        for video, v in data.items()
        for sentence, (a, b) in zip(v["sentences"], v["timestamps"], strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(header(__spec__.name), flush=True)
    queries = val2_queries(args.shared_data)
    with tempfile.TemporaryDirectory() as tmp:
        preds = Path(tmp) / "preds.jsonl"
        write_predictions(preds, random_predictions(queries, top_k=5, seed=0))
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            rows = read_predictions(preds)
            t1 = time.perf_counter()
            metrics, _ = score("activitynet", queries, rows)
            t2 = time.perf_counter()
            times.append((t2 - t0, t1 - t0, t2 - t1))
        total, read, scoring = min(times)
        print(f"{len(queries)} queries, {preds.stat().st_size / 1e6:.1f} MB of predictions")
        print(f"read + score: {total:.3f} s (read {read:.3f} s, score {scoring:.3f} s), "
              f"best of {args.repeats}")
        videos = sorted({q.video: q.duration for q in queries}.items())
        write_store(Path(tmp) / "activitynet", {"dataset": "activitynet"},
                    np.zeros((len(videos), 2, 2), np.float32),
                    [{"video": v, "duration": d, "rows": 1} for v, d in videos],
                    ["<pad>", "<unk>"], np.zeros((2, 2), np.float32), {"test": queries})
        cmd = [sys.executable, "-m", "fsan_cli", "evaluate", "--dataset", "activitynet",
               "--data-dir", tmp, "--predictions", str(preds), "--json"]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
        wall = time.perf_counter() - t0
        print(f"whole command (new process, store load included): {wall:.3f} s")
        print(f"R@1 IoU=0.5 of the random predictions: {metrics['r@1,iou=0.5']:.2f} "
              f"(command said {json.loads(out.stdout)['r@1,iou=0.5']:.2f})")


if __name__ == "__main__":
    main()
