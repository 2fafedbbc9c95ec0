"""Does each model size ground, over several seeds? Issue 20's table: `fsan train --size S` as a
user runs it, on the semi-real benchmarks (fsan_cli/data/semisynthetic.py: real annotation
spans, features synthesised from the captions' words), scored on val and test with and without
the span prior, beside the random and prior baselines; mean and spread over the seeds.

    python -m benchmarks.quality.sizes --dataset activitynet --annotations ../shared/data/activitynet \
        --work /tmp/sem --size small --seeds 0,1,2
    python -m benchmarks.quality.sizes --dataset charades --annotations ../shared/data/charades \
        --work /tmp/sem --size small --seeds 0,1,2
    ... --size base --tag 1500 --set train.steps=1500   # shortened: half of base's 3,000 steps
    ... --data-size full --work /tmp/semfull            # all 10,009 ActivityNet train videos

Each run is one `fsan train` subprocess on one CPU thread (`--set train.threads=1`, unless a
--set says otherwise: runs side by side on a small CPU slow down several-fold with two each),
then `fsan evaluate --json` of its best.pt on val and test. A run whose folder already holds a
finished best.pt (its `done` marker) is not trained again, so an interrupted sweep resumes.
Rows go to WORK/sizes-DATASET.jsonl with the command that made them and a record
(benchmarks/record.py); a markdown table (mean +- sample sd over seeds) is printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.record import header, record
from fsan_cli.data import semisynthetic
from fsan_cli.evaluate.metrics import mean_sd

ROOT = Path(__file__).resolve().parents[2]


def fsan(*args: str) -> list[str]:
    return [sys.executable, "-m", "fsan_cli", *args]


def evaluate(data_dir: Path, dataset: str, split: str, source: list[str]) -> dict:
    out = subprocess.run(
        fsan("-q", "--device", "cpu", "evaluate", "--dataset", dataset, "--data-dir", str(data_dir),
             "--split", split, *source, "--json"),
        check=True, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    return json.loads(out.stdout)


def train_run(args, data_dir: Path, runs: Path, seed: int) -> dict:
    name = f"{args.size}-seed{seed}" + (f"-{args.tag}" if args.tag else "")
    out = runs / name
    cmd = fsan("-q", "--device", "cpu", "train", "--dataset", args.dataset, "--data-dir", str(data_dir),
               "--size", args.size, "--out", str(out), "--overwrite", "--no-test",
               "--set", f"train.seed={seed}", "--set", "train.threads=1",
               *(x for s in args.sets for x in ("--set", s)))  # fmt: skip
    seconds = None
    if not (out / "done").is_file():
        t0 = time.perf_counter()
        runs.mkdir(parents=True, exist_ok=True)
        with (runs / f"{name}.log").open("w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=log, cwd=ROOT)
        seconds = round(time.perf_counter() - t0, 1)
        (out / "done").write_text(json.dumps({"train_s": seconds}))
    seconds = json.loads((out / "done").read_text())["train_s"]
    fit_prior_if_missing(out / "best.pt", data_dir, args.dataset)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    best = max((r for r in records if r.get("best")), key=lambda r: r["epoch"])
    row = {"size": args.size, "seed": seed, "tag": args.tag, "sets": args.sets, "train_s": seconds,
           "best_epoch": best["epoch"], "epochs": records[-1]["epoch"], "steps": records[-1]["step"],
           "command": " ".join(["fsan", *cmd[3:]])}
    for split in ("val", "test"):
        row[split] = evaluate(data_dir, args.dataset, split, ["--checkpoint", str(out / "best.pt")])
    m = row["test"]
    print(f"{name}: {seconds:.0f} s, best epoch {best['epoch']} of {records[-1]['epoch']}, "
          f"test mIoU {m['miou']:.2f} (without span prior {m.get('without_span_prior', m)['miou']:.2f})",
          file=sys.stderr, flush=True)
    return row


def fit_prior_if_missing(best: Path, data_dir: Path, dataset: str) -> None:
    """A run trained by an fsan older than the span prior gets it now, as `fsan train` would
    have at its end (chosen on val)."""
    import torch

    from fsan_cli.core import checkpoint
    from fsan_cli.data.store import load_store
    from fsan_cli.train import span_prior_fit

    if "span_prior" not in checkpoint.load(best):
        span_prior_fit.fit_checkpoint(best, load_store(data_dir / dataset), torch.device("cpu"))


def keys_of(dataset: str) -> list[str]:
    ious = ("0.3", "0.5", "0.7") if dataset == "charades" else ("0.1", "0.3", "0.5")
    return [*(f"r@1,iou={t}" for t in ious), "miou"]


def spread(values: list[float]) -> str:
    mean, sd = mean_sd(values)
    return f"{mean:.1f}" if sd is None else f"{mean:.1f} ± {sd:.1f}"


def markdown(dataset: str, baselines: dict, rows: list[dict]) -> str:
    keys = keys_of(dataset)
    head = "| row | split | " + " | ".join(keys) + " | seeds |"
    lines = [head, "|" + "---|" * (len(keys) + 3)]
    for name, by_split in baselines.items():
        for split, m in by_split.items():
            lines.append(f"| {name} | {split} | " + " | ".join(f"{m[k]:.1f}" for k in keys) + " | |")
    for split in ("val", "test"):
        for label, pick in (("FSAN", lambda r, s: r[s]),
                            ("FSAN without span prior", lambda r, s: r[s].get("without_span_prior", r[s]))):
            vals = [" | ".join(spread([pick(r, split)[k] for r in rows]) for k in keys)]
            lines.append(f"| {label} | {split} | {vals[0]} | {len(rows)} |")
    weights = [r["test"].get("span_prior_weight", 0.0) for r in rows]
    lines.append(f"\nspan prior weights chosen on val: {', '.join(f'{w:g}' for w in weights)}; "
                 f"train s: {', '.join(str(r['train_s']) for r in rows)}; "
                 f"best epoch / epochs: {', '.join(str(r['best_epoch']) + '/' + str(r['epochs']) for r in rows)}")
    return "\n".join(lines)


def table_of(args) -> str:
    """The markdown table of the latest row of each asked seed in WORK/sizes-DATASET.jsonl made
    with this size, tag and data size, with the records of the invocations that made them."""
    path = args.work / f"sizes-{args.dataset}.jsonl"
    latest = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        r = json.loads(line)
        if (r["size"], r["tag"], r["data_size"]) == (args.size, args.tag, args.data_size):
            latest[r["seed"]] = r
    seeds = [int(s) for s in args.seeds.split(",")]
    missing = [s for s in seeds if s not in latest]
    if missing:
        sys.exit(f"{path}: no rows for seed(s) {', '.join(map(str, missing))} of size {args.size}, "
                 f"tag '{args.tag}', data size {args.data_size}")
    rows = [latest[s] for s in seeds]
    made = sorted({json.dumps(r["record"], sort_keys=True) for r in rows})
    return "\n".join(f"# record: {m}" for m in made) + "\n" + markdown(args.dataset, rows[-1]["baselines"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["activitynet", "charades"], required=True)
    ap.add_argument("--annotations", type=Path, help="the official annotation folder (not with --table)")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--data-size", choices=sorted(semisynthetic.SIZES), default="small",
                    help="the semi-real benchmark's size (small: 1,500 train videos)")
    ap.add_argument("--size", choices=["small", "base", "paper"], default="small", help="fsan train --size")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--tag", default="", help="a name for this variant of the runs (with --set)")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="an override for every run, e.g. --set train.steps=4000 (repeatable)")
    ap.add_argument("--table", action="store_true",
                    help="train nothing: the table of the rows already in WORK/sizes-DATASET.jsonl for "
                         "this --size, --tag, --data-size and --seeds (runs made by separate invocations)")
    args = ap.parse_args()
    if args.table:
        print(table_of(args))
        return
    if args.annotations is None:
        ap.error("--annotations is required (unless --table)")
    work = args.work / args.dataset
    data_dir = semisynthetic.build_and_prepare(args.dataset, args.annotations, work, args.data_size)
    baselines: dict[str, dict] = {"random": {}, "prior": {}}
    for base in baselines:
        for split in ("val", "test"):
            baselines[base][split] = evaluate(data_dir, args.dataset, split, ["--baseline", base])
    rows = [train_run(args, data_dir, work / "runs", int(s)) for s in args.seeds.split(",")]
    made = record(__spec__.name)
    path = args.work / f"sizes-{args.dataset}.jsonl"
    with path.open("a") as fh:
        for r in rows:
            fh.write(json.dumps({"dataset": args.dataset, "data_size": args.data_size, **r,
                                 "baselines": baselines, "record": made}) + "\n")
    print(header(__spec__.name))
    print(markdown(args.dataset, baselines, rows))
    print(f"\n(rows appended to {path})", file=sys.stderr)


if __name__ == "__main__":
    main()
