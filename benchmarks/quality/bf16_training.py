"""Does training in bf16 autocast (what `fsan train` does on CUDA) change the result? Trains
the README's main job (the synthetic preset) on this CPU under the CPU's bf16 autocast, at
each seed given, and prints the test split's mIoU beside the same seed in fp32.

    python -m benchmarks.quality.bf16_training --seeds 0 1 2   # about 4 min per seed on 2 cores

One JSON line per seed, with a "record" of how it was made (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from benchmarks.record import record
from fsan_cli.core.settings import load_settings
from fsan_cli.data.store import load_store
from fsan_cli.data.synthetic import ensure_synthetic
from fsan_cli.evaluate.scoring import score
from fsan_cli.predict.predictor import Predictor
from fsan_cli.train.loop import train
from fsan_cli.train.step import TrainingPass


def test_miou(store, seed: int, bf16: bool, root: Path) -> float:
    real = TrainingPass.__init__

    def init(self, model, _bf16):  # the CPU's autocast where CUDA's would run
        real(self, model, bf16)

    TrainingPass.__init__ = init
    try:
        out = root / f"{'bf16' if bf16 else 'fp32'}-{seed}"
        cfg = load_settings("synthetic", overrides=[f"train.seed={seed}"])
        train(cfg, store, out, torch.device("cpu"), progress=False)
    finally:
        TrainingPass.__init__ = real
    queries = store.splits["test"]
    rows = Predictor.load(out / "best.pt", torch.device("cpu")).rows(store, queries, 5)
    return score("synthetic", queries, rows)[0]["miou"]


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--data-dir", type=Path, default=Path("data"))
    args = ap.parse_args()
    store = load_store(ensure_synthetic(args.data_dir))
    made = record(__spec__.name)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            row = {"seed": seed, **{p: round(test_miou(store, seed, p == "bf16", Path(tmp)), 2)
                                    for p in ("fp32", "bf16")}, "record": made}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
