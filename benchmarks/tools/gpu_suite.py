"""Several eager and captured (train.cuda_graph) configurations of benchmarks.speed.train_speed
in one process, so a short GPU lease pays the interpreter and CUDA start once. One JSON line per
configuration (an "error" key where it failed; a "record" of the equivalent train_speed command,
benchmarks/record.py), then a table on stdout.

    python -m benchmarks.tools.gpu_suite --seconds 3 [--out results.jsonl]
    python -m benchmarks.tools.gpu_suite --table results.jsonl   # the table of rows written before

torch.compile variants are not here: run them in their own processes with a time limit
(benchmarks/tools/gpu_check.sh), so that one slow compilation cannot eat the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import traceback
from pathlib import Path

import torch

from benchmarks.record import record
from benchmarks.speed import train_speed

CONFIGS = [  # (name, train_speed arguments): eager first, so that a failed capture cannot
    # leave the process's CUDA state broken for them
    ("bf16 eager", ["--precision", "bf16", "--profile"]),
    ("tf32 eager", ["--precision", "tf32"]),
    ("bf16 eager Nv128", ["--precision", "bf16", "--set", "data.clips=128"]),
    ("bf16 graph", ["--precision", "bf16", "--cuda-graph"]),
    ("tf32 graph", ["--precision", "tf32", "--cuda-graph"]),
    ("bf16 graph Nv128", ["--precision", "bf16", "--cuda-graph", "--set", "data.clips=128"]),
    ("bf16 graph b256", ["--precision", "bf16", "--cuda-graph", "--batch-size", "256"]),
    ("bf16 graph b512", ["--precision", "bf16", "--cuda-graph", "--batch-size", "512"]),
    # two passes, (V, S) and (V, S^-), as the paper and DESIGN.md's speed anchors
    ("bf16 graph 2-pass", ["--precision", "bf16", "--cuda-graph", "--set", "loss.negative_video=false"]),
    # issue 22: bf16 weights with fp32 masters (train.bf16_weights) instead of autocast
    ("bf16w eager", ["--bf16-weights", "--profile"]),
    ("bf16w graph", ["--bf16-weights", "--cuda-graph"]),
    ("bf16w graph b256", ["--bf16-weights", "--cuda-graph", "--batch-size", "256"]),
    ("bf16w graph 2-pass", ["--bf16-weights", "--cuda-graph", "--set", "loss.negative_video=false"]),
]
COLUMNS = ("samples_per_s", "epoch_s_activitynet", "mfu_percent", "mfu_measured_percent",
           "gflop_per_sample", "gpu_busy_ms_per_step", "kernels_per_step", "peak_memory_gb", "warmup_s")


def table(rows: list[dict]) -> str:
    """The rows as a text table: one line each, the error where a row failed."""
    lines = [f"{'configuration':<22}" + "".join(f"{c[:14]:>15}" for c in COLUMNS)]
    for r in rows:
        cells = "".join(f"{str(r.get(c, '-')):>15}" for c in COLUMNS)
        lines.append(f"{str(r.get('name')):<22}" + (cells if "error" not in r else "  " + r["error"][:90]))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=None, help="steps per timed window (train_speed's)")
    ap.add_argument("--table", type=Path, default=None,
                    help="only print the table of the JSON rows in this file (train_speed --out too)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--only", default="", help="comma-separated names of CONFIGS to run (default: all)")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="setting override for every configuration (a quick try on a CPU)")
    ap.add_argument("--out", type=Path, default=None, help="also append the JSON lines here")
    args = ap.parse_args()
    if args.table:
        print(table([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return
    rows = []
    for name, extra in CONFIGS:
        if args.only and name not in args.only.split(","):
            continue
        argv = ["--device", args.device, "--seconds", str(args.seconds), *extra,
                *(f"--set={s}" for s in args.sets), *(["--steps", str(args.steps)] if args.steps else [])]
        try:
            with contextlib.redirect_stdout(sys.stderr):  # its own report: to the log
                row = {"name": name, **train_speed.main(argv)}
        except Exception as exc:  # noqa: BLE001 - report and go on with the next configuration
            traceback.print_exc()
            row = {"name": name, "error": f"{type(exc).__name__}: {exc}"[:300],
                   "record": record(train_speed.__spec__.name, argv)}
        rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(line + "\n")
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(table(rows))


if __name__ == "__main__":
    main()
