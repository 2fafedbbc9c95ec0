"""Which settings make weak supervision ground? Train one run per setting set, select each on
val, and print val and test metrics beside the random and prior baselines.

    python -m benchmarks.quality.grounding_sweep --data-dir data --dataset synthetic --jobs 2 \
        --epochs 8 --grid default --out sweep.jsonl

Each row names its overrides, so `fsan train --dataset D --set k=v ...` reproduces it, and
carries a "record" of how it was made (benchmarks/record.py). Runs are independent processes
(`--jobs` at once, each this module again: run it from the repository root); on one GPU several
share the device.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.record import header, record

GRIDS: dict[str, dict[str, list[str]]] = {
    "default": {
        "paper-literal (SC on P, raw weights)": ["align.sc_map=\"p\"", "align.weights=\"raw\""],
        "SC on P": ["align.sc_map=\"p\""],
        "SC on P-hat": ["align.sc_map=\"p_hat\""],
        "SC centred": ["align.sc_map=\"centered\""],
        "centred, only L^t": ["align.sc_map=\"centered\"", "loss.sap=false"],
        "centred + neg video": ["align.sc_map=\"centered\"", "loss.negative_video=true"],
        "centred + neg video + smooth max": [
            "align.sc_map=\"centered\"", "loss.negative_video=true", "align.match_tau=0.05"],
        "centred + neg video + SAP ramp": [
            "align.sc_map=\"centered\"", "loss.negative_video=true", "train.sap_warmup=0.3"],
        "centred + neg video + log-mean inner": [
            "align.sc_map=\"centered\"", "loss.negative_video=true", "align.inner_form=\"log_mean\""],
        "centred + neg video, tau 0.5": [
            "align.sc_map=\"centered\"", "loss.negative_video=true", "align.tau=0.5"],
        "centred + neg video, margin 0.5": [
            "align.sc_map=\"centered\"", "loss.negative_video=true", "loss.margin=0.5"],
        "centred + neg video, lr 1e-4": [
            "align.sc_map=\"centered\"", "loss.negative_video=true", "train.lr=1e-4"],
        "centred + neg video + smooth max + SAP ramp": [
            "align.sc_map=\"centered\"", "loss.negative_video=true", "align.match_tau=0.05",
            "train.sap_warmup=0.3"],
        "centred + neg video + smooth max + SAP ramp, log-mean": [
            "align.sc_map=\"centered\"", "loss.negative_video=true", "align.match_tau=0.05",
            "train.sap_warmup=0.3", "align.inner_form=\"log_mean\""],
        "P + neg video": ["align.sc_map=\"p\"", "loss.negative_video=true"],
        "P-hat + neg video": ["align.sc_map=\"p_hat\"", "loss.negative_video=true"],
        "centred + neg video, no cross-attn": [
            "align.sc_map=\"centered\"", "loss.negative_video=true", "model.cross_attention=false"],
        "centred + neg video, only L^t": [
            "align.sc_map=\"centered\"", "loss.negative_video=true", "loss.sap=false"],
    },
}
_BEST = ['align.sc_map="centered"', "loss.negative_video=true", "align.match_tau=0.05",
         "train.sap_warmup=0.3", 'align.inner_form="log_mean"']
GRIDS["short"] = {
    "best": _BEST,
    "best, dropout 0": [*_BEST, "model.dropout=0.0"],
    "best, SAP ramp 0.6": [*_BEST, "train.sap_warmup=0.6"],
    "best, no SAP ramp": [*_BEST, "train.sap_warmup=0.0"],
    "best, only L^t": [*_BEST, "loss.sap=false"],
    "best, lr 1e-3": [*_BEST, "train.lr=1e-3"],
    "best, lr 2e-4": [*_BEST, "train.lr=2e-4"],
    "best, weights tau 0.05": [*_BEST, "align.tau=0.05"],
    "best, smooth max 0.02": [*_BEST, "align.match_tau=0.02"],
    "best, smooth max 0.1": [*_BEST, "align.match_tau=0.1"],
    "best, margin 0.1": [*_BEST, "loss.margin=0.1"],
    "best, no negative video": [*_BEST, "loss.negative_video=false"],
    "best, hidden 64, dropout 0": [*_BEST, "model.hidden=64", "model.dropout=0.0"],
    "best, 3 layers, dropout 0": [*_BEST, "model.layers=3", "model.dropout=0.0"],
    "best, SC on P-hat": [*_BEST, 'align.sc_map="p_hat"'],
    "best, SC on P": [*_BEST, 'align.sc_map="p"'],
}

GRIDS["anchor"] = {
    "best": _BEST,
    "best + inner match": [*_BEST, 'align.match_score="inner"'],
    "best + inner match, hard max": [*_BEST, 'align.match_score="inner"', "align.match_tau=0.0"],
    "inner match, P-hat SC": [*_BEST, 'align.match_score="inner"', 'align.sc_map="p_hat"'],
    "inner match, P SC": [*_BEST, 'align.match_score="inner"', 'align.sc_map="p"'],
    "best + inner match, seed 1": [*_BEST, 'align.match_score="inner"', "train.seed=1"],
    "best, seed 1": [*_BEST, "train.seed=1"],
}


def run_one(args: argparse.Namespace, name: str, sets: list[str], out_dir: Path) -> dict:
    """Train one setting set in this process and return its val/test metrics."""
    import torch

    from fsan_cli.core.device import resolve_device
    from fsan_cli.core.settings import load_settings
    from fsan_cli.data.datasets import open_store
    from fsan_cli.evaluate.scoring import score
    from fsan_cli.predict.predictor import Predictor
    from fsan_cli.train.loop import train

    overrides = [*sets, f"train.epochs={args.epochs}", *args.set]
    cfg = load_settings(args.dataset, None, overrides)
    device = resolve_device(args.device, announce=False)
    torch.set_num_threads(args.threads)
    store = open_store(args.dataset, Path(args.data_dir), cfg.data.clips)
    t0 = time.perf_counter()
    summary = train(cfg, store, out_dir, device, progress=False)
    row = {"name": name, "sets": overrides, "train_s": round(time.perf_counter() - t0, 1),
           "best_epoch": summary["best_epoch"]}
    predictor = Predictor.load(out_dir / "best.pt", device)
    for split in ("val", "test"):
        queries = store.split(split)
        preds = predictor.rows(store, queries, cfg.eval.top_k)
        metrics = score(args.dataset, queries, preds)[0]
        firsts = {tuple(p["moments"][0][:2]) for p in preds}
        whole = sum(abs(p["moments"][0][0]) < 1e-6 and abs(p["moments"][0][1] - p["duration"]) < 1e-3 for p in preds)
        row[split] = {**{k: round(v, 2) for k, v in metrics.items()},
                      "whole_video_share": round(100 * whole / len(preds), 1),
                      "distinct_answers": len(firsts)}
    return row


def baselines_rows(args: argparse.Namespace) -> list[dict]:
    from fsan_cli.core.settings import load_settings
    from fsan_cli.data.datasets import open_store
    from fsan_cli.evaluate.baselines import prior_predictions, random_predictions
    from fsan_cli.evaluate.scoring import score

    cfg = load_settings(args.dataset, None, args.set)
    store = open_store(args.dataset, Path(args.data_dir), cfg.data.clips)
    rows = []
    for name, make in (
        ("random", lambda q: random_predictions(q, top_k=5, seed=0)),
        ("prior", lambda q: prior_predictions(store.split("train"), q, top_k=5)),
    ):
        row = {"name": name, "sets": []}
        for split in ("val", "test"):
            q = store.split(split)
            row[split] = {k: round(v, 2) for k, v in score(args.dataset, q, make(q))[0].items()}
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--grid", default="default", choices=sorted(GRIDS))
    ap.add_argument("--only", action="append", default=[], help="run only these names")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--set", action="append", default=[], help="override for every run")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs-dir", default="runs/sweep")
    ap.add_argument("--out", default="sweep.jsonl")
    ap.add_argument("--one", nargs=2, metavar=("NAME", "OUT_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    grid = GRIDS[args.grid]
    if args.one:
        name, out_dir = args.one
        print(json.dumps(run_one(args, name, grid[name], Path(out_dir))))
        return
    names = [n for n in grid if not args.only or n in args.only]
    # make the store once before the workers start
    from fsan_cli.core.settings import load_settings
    from fsan_cli.data.datasets import open_store

    open_store(args.dataset, Path(args.data_dir), load_settings(args.dataset, None, args.set).data.clips)
    rows = baselines_rows(args)
    base = [a for a in sys.argv[1:]]
    pending = list(enumerate(names))
    running: list[tuple[str, subprocess.Popen]] = []
    results: dict[str, dict] = {}
    while pending or running:
        while pending and len(running) < args.jobs:
            i, name = pending.pop(0)
            out_dir = Path(args.runs_dir) / f"{i:02d}"
            cmd = [sys.executable, "-m", __spec__.name, *base, "--one", name, str(out_dir)]
            running.append((name, subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)))
        time.sleep(0.5)
        for item in list(running):
            name, proc = item
            if proc.poll() is not None:
                running.remove(item)
                out = proc.stdout.read().strip().splitlines()
                results[name] = json.loads(out[-1]) if proc.returncode == 0 and out else {"name": name, "error": proc.returncode}
                print(json.dumps(results[name]), file=sys.stderr, flush=True)
    rows += [results[n] for n in names]
    made = record(__spec__.name)
    with open(args.out, "w") as fh:
        for r in rows:
            fh.write(json.dumps({**r, "record": made}) + "\n")
    print(header(__spec__.name))
    keys = ["r@1,iou=0.3", "r@1,iou=0.5", "miou"]
    print(f"{'setting':45s} | val " + " ".join(f"{k:>12s}" for k in keys) + " | test " + " ".join(f"{k:>12s}" for k in keys) + " | whole% distinct")
    for r in rows:
        if "val" not in r:
            print(f"{r['name']:45s} | error {r.get('error')}")
            continue
        v, t = r["val"], r["test"]
        print(f"{r['name']:45s} | " + " ".join(f"{v[k]:12.2f}" for k in keys) + " | " + " ".join(f"{t[k]:12.2f}" for k in keys)
              + f" | {t.get('whole_video_share', '-')} {t.get('distinct_answers', '-')}")


if __name__ == "__main__":
    main()
