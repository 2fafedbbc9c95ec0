"""What does `fsan train` learn from long videos? The semi-real ActivityNet-like videos
(benchmarks/quality/sizes.py's WORK/activitynet) laid end to end K at a time in every split, as a
user's custom data of many-minute videos: `fsan prepare -d custom` and `fsan train --size small`
on them as a user would, then the long test videos (the same ones, in the same order, as
benchmarks/quality/long_videos.py lays them) answered by that model, beside the figures of the
model trained on the single videos (long_videos.py's rows).

    python -m benchmarks.quality.long_training --work /tmp/sem31/activitynet --k 10 --seed 0

Every video of the long data is pooled whole into N_v clips for training (fsan train does not
window training videos): the model learns at K times the clip length.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

from benchmarks.quality import long_videos as lv
from benchmarks.record import header, record
from fsan_cli.data.store import load_store
from fsan_cli.predict.predictor import Predictor


def write_long(store, h5: Path, k: int, seed: int, out: Path) -> tuple[Path, Path]:
    """Every split's videos laid end to end, k to a long video, in a seeded order: a custom
    annotation file (all of each sentence's times shifted) and a feature file of the rows."""
    lines = []
    features = out / "long-features.h5"
    with h5py.File(h5, "r") as src, h5py.File(features, "w") as dst:
        for split in ("train", "val", "test"):
            for n, (parts, seconds) in enumerate(lv.laid(store, split, k, seed)):
                name = f"{split}{n:04d}"
                dst.create_dataset(name, data=np.concatenate([src[v]["c3d_features"][()] for v, *_ in parts]))
                lines += [json.dumps({"video": name, "duration": seconds, "query": q.query,
                                      "times": [[a + offset, b + offset] for a, b in q.times], "split": split})
                          for _, queries, offset, _ in parts for q in queries]
    annotations = out / "long.jsonl"
    annotations.write_text("\n".join(lines) + "\n")
    return annotations, features


def fsan(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fsan_cli", "--device", "cpu", *args], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="the sizes benchmark's WORK/activitynet")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="fsan train's seed")
    ap.add_argument("--clips", type=int, help="fsan prepare --clips (default: the custom preset's N_v)")
    ap.add_argument("--out", type=Path, help="append the row (JSON) here")
    args = ap.parse_args()
    store = load_store(args.work / "data" / "activitynet")
    h5 = args.work / "activitynet-small" / "sub_activitynet_v1-3.c3d.hdf5"
    out = args.work / (f"long-training-k{args.k}" + (f"-clips{args.clips}" if args.clips else ""))
    out.mkdir(parents=True, exist_ok=True)
    made = record(__spec__.name)
    print(header(__spec__.name))
    run = out / "runs" / f"small-seed{args.seed}"
    if not (run / "best.pt").is_file():
        annotations, features = write_long(store, h5, args.k, 0, out)
        fsan("prepare", "-d", "custom", "--data-dir", str(out / "data"), "--annotations", str(annotations),
             "--features", str(features), "--overwrite", *(["--clips", str(args.clips)] if args.clips else []))
        fsan("train", "-d", "custom", "--data-dir", str(out / "data"), "--size", "small", "--out", str(run),
             "--overwrite", "--no-test", "--set", f"train.seed={args.seed}", "--set", "train.threads=1",
             *(["--set", f"data.clips={args.clips}"] if args.clips else []))
    torch.set_num_threads(1)
    predictor = Predictor.load(run / "best.pt", torch.device("cpu"))
    row = {"k": args.k, "seed": args.seed, "trained_on": f"{args.k} videos end to end", "clips": predictor.clips,
           "durations": predictor.data.get("durations"),
           **lv.run_k(predictor, store, h5, args.k, 0), "record": made}
    print(json.dumps({x: y for x, y in row.items() if x != "record"}), flush=True)
    if args.out:
        with args.out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
