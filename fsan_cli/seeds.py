"""`fsan train --seeds 0,1,2`: the same settings trained once per seed, each into its own run
folder OUT/seed<N>, each scored on test; the table shows every seed, their mean and sample
standard deviation, beside the random and prior baselines. One seed is one draw: a setting is
only better than another where the difference is larger than this spread."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from fsan_cli.errors import FsanError
from fsan_cli.metrics import metric_keys


def parse_seeds(text: str) -> list[int]:
    """"0,1,2" -> [0, 1, 2]; distinct whole numbers, at least one."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise FsanError(f"--seeds {text!r} is not a comma-separated list of whole numbers",
                        "Write e.g. --seeds 0,1,2") from None
    if not seeds:
        raise FsanError("--seeds names no seed", "Write e.g. --seeds 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise FsanError(f"--seeds {text!r} names a seed twice", "List each seed once")
    return seeds


def spread(dataset: str, runs: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """(mean, sample standard deviation; 0 for one run) of each metric over the runs."""
    keys = metric_keys(dataset)
    mean = {k: statistics.fmean(r[k] for r in runs) for k in keys}
    sd = {k: statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0 for k in keys}
    return mean, sd


def train_seeds(dataset: str, cfg: Any, store: Any, out: Path, seeds: list[int], device: Any,
                compile_: bool, overwrite: bool, as_json: bool) -> dict[str, Any] | None:
    """Train and test once per seed into out/seed<N>; the runs' test metrics, their mean and
    spread, and the baselines (None on the other ranks of torchrun)."""
    from fsan_cli import runs
    from fsan_cli.evaluation import evaluate_split

    folders = [out / f"seed{s}" for s in seeds]
    for folder in folders:  # every folder checked before the first run starts
        runs.check_out(folder, overwrite)
    done, last = [], None
    for seed, folder in zip(seeds, folders, strict=True):
        summary = runs.fit(cfg.replace("train.seed", seed), store, folder, device, False, compile_, overwrite)
        if summary is None:
            return None
        last = evaluate_split(dataset, store, "test", checkpoint=folder / "best.pt", top_k=cfg.eval.top_k,
                              seed=cfg.train.seed, device=summary["device"], with_baselines=not as_json)
        done.append({"seed": seed, "run": str(folder), "best_epoch": summary["best_epoch"],
                     "metrics": last.metrics, "without_span_prior": last.without_prior})
    mean, sd = spread(dataset, [r["metrics"] for r in done])
    return {"runs": done, "mean": mean, "sd": sd, "last": last}


def show_seeds(dataset: str, result: dict[str, Any], as_json: bool) -> None:
    from fsan_cli.output import print_json, stdout_console
    from fsan_cli.report import results_table

    keys = metric_keys(dataset)
    runs, n = result["runs"], len(result["runs"])
    if as_json:
        print_json({"dataset": dataset, "split": "test", "seeds": [r["seed"] for r in runs],
                    "mean": {k: round(result["mean"][k], 4) for k in keys},
                    "sd": {k: round(result["sd"][k], 4) for k in keys},
                    "runs": [{"seed": r["seed"], "run": r["run"], "best_epoch": r["best_epoch"],
                              **{k: round(r["metrics"][k], 4) for k in keys}} for r in runs]})
        return
    rows = [(f"FSAN seed {r['seed']}", r["metrics"]) for r in runs]
    rows += [(f"FSAN mean of {n} seeds", result["mean"]), ("FSAN sd (sample)", result["sd"])]
    if all(r["without_span_prior"] is not None for r in runs):
        own, own_sd = spread(dataset, [r["without_span_prior"] for r in runs])
        rows += [("FSAN without span prior, mean", own), ("FSAN without span prior, sd", own_sd)]
    last = result["last"]
    rows += [row for row in last.baselines if not row[0].startswith("FSAN")]
    caption = last.caption.split("\nCheckpoint:")[0] + f"\nRuns: {', '.join(r['run'] for r in runs)}"
    stdout_console().print(results_table(dataset, rows, caption=caption))
