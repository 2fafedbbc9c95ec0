"""Semi-synthetic benchmark: the REAL annotation files (ActivityNet-Captions, Charades-STA) with
clip features synthesised from each caption's words inside its real span
(fsan_cli/data/semisynthetic.py), written in the official layouts and prepared with `fsan prepare`
into WORK/data; with --train, then trained and scored on val and test.

    python -m benchmarks.quality.semisynthetic --dataset activitynet \\
        --annotations ../shared/data/activitynet --work /tmp/semi --size small
    python -m benchmarks.quality.semisynthetic --dataset charades \\
        --annotations ../shared/data/charades --work /tmp/semi --size small --train -- \\
        --set train.epochs=12

`--size small` keeps a CPU-sized subset of videos (1,500 train, 250 val, 250 test); `--size full`
keeps them all. Arguments after `--` go to `fsan train`. The val and test tables are printed
beside the random and prior baselines, after a first `# record:` line saying how they were made
(benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from benchmarks.record import header
from fsan_cli.data.semisynthetic import SIZES, build_and_prepare


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["activitynet", "charades"], required=True)
    ap.add_argument("--annotations", type=Path, required=True, help="the real annotation folder")
    ap.add_argument("--work", type=Path, required=True, help="where files, store and runs go")
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--dim", type=int, default=128, help="feature dimension (real C3D: 500)")
    ap.add_argument("--rows-per-second", type=float, default=1.0)
    ap.add_argument("--noise", type=float, default=0.6)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--train", action="store_true", help="then train and evaluate")
    args, rest = ap.parse_known_args()
    rest = [a for a in rest if a != "--"]
    print(header(__spec__.name), flush=True)
    data_dir = build_and_prepare(args.dataset, args.annotations, args.work, args.size, args.dim,
                                 args.rows_per_second, args.noise, args.seed)
    fsan = [sys.executable, "-m", "fsan_cli"]
    if args.train:
        run = args.work / "runs" / f"{args.dataset}-{args.size}"
        subprocess.run([*fsan, "train", "--dataset", args.dataset, "--data-dir", str(data_dir),
                        "--out", str(run), "--overwrite", *rest], check=True)
        for split in ("val", "test"):  # Charades-STA's val: 10% of train videos, carved by prepare
            subprocess.run([*fsan, "evaluate", "--dataset", args.dataset, "--data-dir", str(data_dir),
                            "--split", split, "--checkpoint", str(run / "best.pt")], check=True)


if __name__ == "__main__":
    main()
