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
from fsan_cli.core.checkpoint import check_compatible
from fsan_cli.core.device import resolve_device
from fsan_cli.data.store import load_store
from fsan_cli.evaluate.metrics import top1_iou
from fsan_cli.predict.predictor import Predictor
from fsan_cli.train.loop import video_rows
from models.segments import segments_to_seconds


def top1(checkpoint: Path, store, queries, device: torch.device, precision: str) -> np.ndarray:
    """(Q, 2) top-1 clip segments from the one Predictor, the whole model (weights and inputs)
    in `precision` ("fp32" or "bf16")."""
    predictor = Predictor.load(checkpoint, device, precision)
    check_compatible({"data": predictor.data}, store)
    feats = torch.from_numpy(np.asarray(store.features, dtype=np.float32)).to(device)
    ids = predictor.encode([q.query for q in queries])
    return predictor.predict(feats, video_rows(store, queries), ids, 1, nms=1.0).segments[:, 0]


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("store", type=Path, help="a prepared store folder, e.g. data/activitynet")
    ap.add_argument("--split", default="test")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    args = ap.parse_args()
    print(header(__spec__.name), flush=True)
    store = load_store(args.store)
    queries = store.split(args.split)
    device = resolve_device(args.device, announce=False)
    segs = {p: top1(args.checkpoint, store, queries, device, p) for p in ("fp32", "bf16")}
    same = (segs["fp32"] == segs["bf16"]).all(1).mean()
    print(f"{len(queries)} {args.split} queries; top-1 moment identical under bf16: {100 * same:.2f}%")
    durations = torch.tensor([q.duration for q in queries], dtype=torch.float64)
    for name, s in segs.items():
        seconds = segments_to_seconds(torch.from_numpy(s[:, None]), durations, store.clips)[:, 0]
        iou = top1_iou(seconds, [q.times for q in queries])
        print(f"{name}: top-1 mIoU {100 * iou.mean():.2f}, R@1 IoU 0.5 {100 * (iou >= 0.5).mean():.2f}")


if __name__ == "__main__":
    main()
