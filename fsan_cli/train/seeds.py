"""`fsan train --seeds 0,1,2`: the same settings trained once per seed, each into its own run
folder OUT/seed<N>, each scored on test; the table shows every seed, their mean and sample
standard deviation, beside the random and prior baselines. One seed is one draw: a setting is
only better than another where the difference is larger than this spread.

Run again after an interruption, the same command continues: a seed folder that holds a run of
the same settings is resumed (a finished one only scored), so finished seeds are kept."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from fsan_cli.core.errors import FsanError
from fsan_cli.core.output import log, print_json, stdout_console
from fsan_cli.core.settings import Settings
from fsan_cli.evaluate.evaluation import evaluate_split
from fsan_cli.evaluate.metrics import mean_sd, metric_keys
from fsan_cli.evaluate.report import results_table
from fsan_cli.train import fit
from fsan_cli.train.runs import check_out


def parse_seeds(text: str) -> list[int]:
    """"0,1,2" -> [0, 1, 2]; distinct whole numbers, at least one."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise FsanError(f"--seeds {text!r} is not a comma-separated list of whole numbers",
                        "Write e.g. --seeds 0,1,2") from None
    if not seeds:
        raise FsanError("--seeds names no seed", "Write e.g. --seeds 0,1,2")
    if any(not 0 <= s < 2**63 for s in seeds):
        raise FsanError(f"--seeds {text!r} holds a seed outside 0 .. 2^63 - 1", "Use smaller seeds")
    if len(set(seeds)) != len(seeds):
        raise FsanError(f"--seeds {text!r} names a seed twice", "List each seed once")
    return seeds


def spread(dataset: str, runs: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """(mean, sample standard deviation; 0 for one run) of each metric over the runs."""
    stats = {k: mean_sd(r[k] for r in runs) for k in metric_keys(dataset)}
    return {k: m for k, (m, _) in stats.items()}, {k: 0.0 if sd is None else sd for k, (_, sd) in stats.items()}


def plan_folders(out: Path, seeds: list[int], cfg: Any, overwrite: bool) -> list[bool]:
    """Check every seed's folder before the first run starts; for each, whether it holds a run
    of these settings to continue (kept unless --overwrite)."""

    resume = []
    for seed in seeds:
        folder = out / f"seed{seed}"
        if not overwrite and (folder / "config.toml").is_file() and (folder / "last.pt").is_file():
            try:
                saved = Settings.from_dict(tomllib.loads((folder / "config.toml").read_text("utf-8")))
            except (OSError, ValueError, FsanError):
                saved = None
            if saved is None or saved.learning() != cfg.replace("train.seed", seed).learning():
                raise FsanError(f"run folder {folder} holds a run of other settings",
                                "Pass --overwrite to replace it, or choose another --out")
            resume.append(True)
            continue
        check_out(folder, overwrite)
        resume.append(False)
    return resume


def train_seeds(dataset: str, cfg: Any, store: Any, out: Path, seeds: list[int], resume: list[bool],
                device: Any, compile_: bool, overwrite: bool, as_json: bool) -> dict[str, Any] | None:
    """Train (or continue) and test once per seed into out/seed<N>; the runs' test metrics,
    their mean and spread, and the baselines (None on the other ranks of torchrun)."""

    done, last = [], None
    again = "Run the same command again to continue: finished seeds are kept."
    for seed, kept in zip(seeds, resume, strict=True):
        folder = out / f"seed{seed}"
        if kept:
            log(f"Continuing seed {seed} in {folder} (a run of these settings)")
        summary = fit.fit(cfg.replace("train.seed", seed), store, folder, device, kept, compile_,
                           overwrite and not kept, again)
        if summary is None:
            return None
        try:
            last = evaluate_split(dataset, store, "test", checkpoint=folder / "best.pt", top_k=cfg.eval.top_k,
                                  seed=cfg.train.seed, device=summary["device"], with_baselines=not as_json)
        except KeyboardInterrupt:
            raise fit.scoring_interrupted(folder) from None
        own = last.metrics if last.without_prior is None else last.without_prior
        done.append({"seed": seed, "run": str(folder), "best_epoch": summary["best_epoch"],
                     "metrics": last.metrics, "without_span_prior": own, "span_prior_weight": last.prior_weight or 0.0})
    mean, sd = spread(dataset, [r["metrics"] for r in done])
    own_mean, own_sd = spread(dataset, [r["without_span_prior"] for r in done])
    return {"runs": done, "mean": mean, "sd": sd, "own_mean": own_mean, "own_sd": own_sd, "last": last}


def show_seeds(dataset: str, result: dict[str, Any], as_json: bool) -> None:
    keys = metric_keys(dataset)
    runs, n = result["runs"], len(result["runs"])

    def rounded(m: dict[str, float]) -> dict[str, float]:
        return {k: round(m[k], 4) for k in keys}

    if as_json:
        print_json({"dataset": dataset, "split": "test", "seeds": [r["seed"] for r in runs],
                    "mean": rounded(result["mean"]), "sd": rounded(result["sd"]),
                    "without_span_prior": {"mean": rounded(result["own_mean"]), "sd": rounded(result["own_sd"])},
                    "runs": [{"seed": r["seed"], "run": r["run"], "best_epoch": r["best_epoch"],
                              "span_prior_weight": r["span_prior_weight"], **rounded(r["metrics"]),
                              "without_span_prior": rounded(r["without_span_prior"])} for r in runs]})
        return
    rows = [(f"FSAN seed {r['seed']}" + (" + span prior" if r["span_prior_weight"] > 0 else ""), r["metrics"])
            for r in runs]
    if n > 1:  # a spread needs two runs
        rows += [(f"FSAN mean of {n} seeds", result["mean"]), ("FSAN sd (sample)", result["sd"])]
        if any(r["span_prior_weight"] > 0 for r in runs):
            rows += [("FSAN without span prior, mean", result["own_mean"]),
                     ("FSAN without span prior, sd", result["own_sd"])]
    last = result["last"]
    rows += [row for row in last.baselines if not row[0].startswith(("FSAN", "the same"))]
    caption = last.caption.split("\nCheckpoint:")[0] + f"\nRuns: {', '.join(r['run'] for r in runs)}"
    stdout_console().print(results_table(dataset, rows, caption=caption))
