"""How much bf16 inference (`fsan ground --precision auto` on CUDA and AMX CPUs) changes the
answers of a trained checkpoint: the share of test queries whose top-1 moment is identical to
fp32's, and top-1 mIoU and R@1 at IoU 0.5 under both.

    python -m benchmarks.quality.precision_agreement runs/x/best.pt data/activitynet [--split test]

The first line printed, `# record: {...}`, says how the figures were made (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from benchmarks.record import header
from fsan_cli import engine
from fsan_cli.data.store import load_store


def top1(checkpoint: Path, store, queries, dtype: torch.dtype) -> torch.Tensor:
    """(Q, 2) top-1 clip segments with the whole model (weights and inputs) in `dtype`."""
    model, ckpt = engine.load_checkpoint(checkpoint)
    model = model.to(dtype)
    feats = torch.from_numpy(np.asarray(store.features, dtype=np.float32))
    data = engine.split_tensors(store, queries, ckpt["vocab"], model.cfg.max_tokens)
    with torch.inference_mode():
        return engine.predict_segments(model, feats, data, 1, 1.0, batch_size=128)["segments"][:, 0]


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("store", type=Path, help="a prepared store folder, e.g. data/activitynet")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    print(header(__spec__.name), flush=True)
    store = load_store(args.store)
    queries = store.split(args.split)
    segs = {name: top1(args.checkpoint, store, queries, dt)
            for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}  # fmt: skip
    same = (segs["fp32"] == segs["bf16"]).all(1).float().mean().item()
    print(f"{len(queries)} {args.split} queries; top-1 moment identical under bf16: {100 * same:.2f}%")
    durations = torch.tensor([q.duration for q in queries], dtype=torch.float64)
    for name, s in segs.items():
        seconds = engine.segments_to_seconds(s[:, None], durations, store.clips)[:, 0]
        iou = engine.top1_iou(seconds, [q.times for q in queries])
        print(f"{name}: top-1 mIoU {100 * iou.mean():.2f}, R@1 IoU 0.5 {100 * (iou >= 0.5).mean():.2f}")


if __name__ == "__main__":
    main()
