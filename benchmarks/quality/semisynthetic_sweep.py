"""The settings table of issue 5: every training setting tried, on ActivityNet-like and
Charades-like spans (the semi-synthetic data of fsan_cli/data/semisynthetic.py), beside the
random and prior baselines, on val (where settings are chosen) and test.

    python -m benchmarks.quality.semisynthetic_sweep --dataset activitynet \
        --annotations ../shared/data/activitynet --work /tmp/sweep --epochs 16 --jobs 2
    python -m benchmarks.quality.semisynthetic_sweep --dataset charades \
        --annotations ../shared/data/charades --work /tmp/sweep --epochs 12 --jobs 2
    python -m benchmarks.quality.semisynthetic_sweep ... --only default,paper     # some rows
    python -m benchmarks.quality.semisynthetic_sweep ... --set train.seed=1       # another seed

Each setting is one `fsan train` with the CPU model below plus the setting's `--set` overrides,
one CPU thread per run and `--jobs` runs at a time; then `fsan evaluate --json` of its best.pt
on val and test. Charades-STA has no val split in its files: `fsan prepare` holds out 10% of
the train videos as val (`--val-share`), where train selects and the settings are compared. Results go to
WORK/sweep-DATASET.jsonl (one line per row, with the command that reproduces it and a "record"
of how the row was made: benchmarks/record.py), and a markdown table is printed, its first line
that record.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.record import header, record
from fsan_cli.data import semisynthetic

ROOT = Path(__file__).resolve().parents[2]

# The CPU-sized model every row trains (docs/method.md): minutes on one core.
CPU_MODEL = ["model.hidden=32", "model.layers=1", "model.heads=2", "model.align_dim=32",
             "model.dropout=0.0", "train.threads=1", "train.batch_size=64", "train.lr=5e-4"]  # fmt: skip

PAPER = ["align.sc_map=p", "align.weights=raw", "align.match_score=sc", "align.match_tau=0",
         "align.inner_form=sigmoid_sum", "align.outer_form=literal", "loss.negative_video=false",
         "loss.w_matching=0.3334", "loss.w_inner=0.3333", "loss.w_outer=0.3333",
         "train.sap_start=0", "train.sap_warmup=0"]  # fmt: skip

# name -> (overrides on top of the presets' defaults, what the row tests)
SETTINGS: dict[str, tuple[list[str], str]] = {
    "default": ([], "the presets' defaults"),
    "paper": (PAPER, "paper-literal: SC on raw P, raw weights, hard max of SC, sigmoid-sum inner, literal outer, 1/3 each, SAP from step 0"),
    "paper_p_hat": ([*PAPER, "align.sc_map=p_hat"], "paper-literal with SC on P-hat"),
    "sc_on_p": (["align.sc_map=p"], "default, SC on raw P instead of the centred map"),
    "match_sc": (["align.match_score=sc"], "default, S(V,S) = best SC (unanchored)"),
    "hard_max": (["align.match_tau=0"], "default, hard max over segments in eq. 7"),
    "no_neg_video": (["loss.negative_video=false"], "default without the (V-, S) contrast"),
    "sap_from_start": (["train.sap_start=0", "train.sap_warmup=0"], "default, SAP losses from step 0"),
    "sap_start_0.25": (["train.sap_start=0.25"], "default, SAP losses from 25% of the steps"),
    "equal_weights": (["loss.w_matching=0.3334", "loss.w_inner=0.3333", "loss.w_outer=0.3333"], "default, lambda 1/3 each"),
    "no_sap": (["loss.sap=false"], "default, L^t only (Table 4's w/o SAP losses)"),
    "sigmoid_sum": (["align.inner_form=sigmoid_sum"], "default, the paper's sigmoid-sum inner loss"),
}  # fmt: skip


def fsan(*args: str) -> list[str]:
    return [sys.executable, "-m", "fsan_cli", *args]


def evaluate(data_dir: Path, dataset: str, split: str, source: list[str]) -> dict:
    out = subprocess.run(
        fsan("-q", "evaluate", "--dataset", dataset, "--data-dir", str(data_dir), "--split", split,
             *source, "--json"),
        check=True, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    return json.loads(out.stdout)


def train_row(name: str, args, data_dir: Path, runs: Path) -> list[dict]:
    sets, what = SETTINGS[name]
    sets = [*CPU_MODEL, f"train.epochs={args.epochs}", *args.sets, *sets]
    out = runs / name
    cmd = fsan("-q", "train", "--dataset", args.dataset, "--data-dir", str(data_dir), "--out",
               str(out), "--overwrite", "--no-test", *(x for s in sets for x in ("--set", s)))  # fmt: skip
    t0 = time.perf_counter()
    log = (runs / f"{name}.log").open("w")
    subprocess.run(cmd, check=True, stdout=log, stderr=log, cwd=ROOT)
    seconds = time.perf_counter() - t0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    best = max((r for r in records if r.get("best")), key=lambda r: r["epoch"])["epoch"]
    rows = []
    for split in ("val", "test"):
        m = evaluate(data_dir, args.dataset, split, ["--checkpoint", str(out / "best.pt")])
        rows.append({"setting": name, "what": what, "split": split, "sets": sets,
                     "train_s": round(seconds, 1), "best_epoch": best, "metrics": m,
                     "command": " ".join(["fsan", *cmd[3:]])})  # fmt: skip
    print(f"{name}: {seconds:.0f} s, best epoch {best}, test mIoU {rows[1]['metrics']['miou']:.2f}",
          file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["activitynet", "charades"], required=True)
    ap.add_argument("--annotations", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--size", choices=sorted(semisynthetic.SIZES), default="small")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time, one CPU thread each")
    ap.add_argument("--only", default="", help="comma-separated setting names (default: all)")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="an override for every row, e.g. --set train.seed=1 (repeatable)")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(SETTINGS)
    unknown = set(names) - set(SETTINGS)
    if unknown:
        ap.error(f"unknown settings {sorted(unknown)}; known: {', '.join(SETTINGS)}")
    work = args.work / args.dataset
    data_dir = semisynthetic.build_and_prepare(args.dataset, args.annotations, work, args.size)
    runs = work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    results = []
    for base in ("random", "prior"):
        for split in ("val", "test"):  # Charades-STA's val is carved from train by prepare
            m = evaluate(data_dir, args.dataset, split, ["--baseline", base])
            results.append({"setting": base, "split": split, "metrics": m,
                            "command": f"fsan evaluate --dataset {args.dataset} --split {split} --baseline {base}"})  # fmt: skip
    with ThreadPoolExecutor(args.jobs) as pool:
        for rows in pool.map(lambda n: train_row(n, args, data_dir, runs), names):
            results += rows
    path = args.work / f"sweep-{args.dataset}.jsonl"
    made = record(__spec__.name)
    with path.open("a") as fh:
        for r in results:
            fh.write(json.dumps({"dataset": args.dataset, "size": args.size, "epochs": args.epochs,
                                 "common_sets": args.sets, **r, "record": made}) + "\n")
    print(header(__spec__.name))
    print(markdown(results, args.dataset))
    print(f"\n(rows appended to {path})", file=sys.stderr)


def markdown(results: list[dict], dataset: str) -> str:
    ious = ("0.3", "0.5", "0.7") if dataset == "charades" else ("0.1", "0.3", "0.5")
    keys = [*(f"r@1,iou={t}" for t in ious), "miou"]
    head = "| setting | split | " + " | ".join(keys) + " | train s | best epoch |"
    lines = [head, "|" + "---|" * (len(keys) + 4)]
    for r in results:
        m = r["metrics"]
        vals = " | ".join(f"{m[k]:.2f}" for k in keys)
        lines.append(f"| {r['setting']} | {r['split']} | {vals} | {r.get('train_s', '')} | {r.get('best_epoch', '')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
