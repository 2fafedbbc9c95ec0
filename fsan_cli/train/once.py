"""`fsan train` without --seeds: one run trained (or continued) in its run folder, then its best
checkpoint scored on the test split."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsan_cli.core.device import resolve_device
from fsan_cli.core.output import log
from fsan_cli.core.settings import Settings
from fsan_cli.data.datasets import open_store
from fsan_cli.evaluate import evaluation
from fsan_cli.train import fit, runs


@dataclass
class Trained:
    out: Path  # the run folder
    summary: dict[str, Any] | None  # fit's; None on the other ranks of torchrun
    result: Any = None  # the test split's evaluation (evaluate_split); None when not scored
    started: float = 0.0  # time.perf_counter() when training started


def train_once(dataset: str, data_dir: Path, out: Path, cfg: Settings | None, resume: Path | None,
               micro_batch: int | None, device_spec: str, compile_: bool, overwrite: bool, test: bool,
               with_baselines: bool) -> Trained:
    """Train into `out` with `cfg` (options checked, `out` checked), or continue the run in
    `resume` with its own settings (cfg None); then, when `test`, score its best.pt on test.
    The device is resolved before any data is read (or generated)."""
    device = resolve_device(device_spec)
    if resume is not None:
        cfg, store, dataset = runs.resumed(resume, data_dir, micro_batch)
        out = resume
    else:
        store = open_store(dataset, data_dir, cfg.data.clips)
    started = time.perf_counter()
    summary = fit.fit(cfg, store, out, device, resume is not None, compile_, overwrite)
    if summary is None or not test:  # another rank's process, or no test wanted
        return Trained(out, summary, None, started)
    if not any(q.times for q in store.splits.get("test") or []):  # sentence-only data
        log(f"No test table: the data at {store.path} has no test split with times to score. "
            f'Ground with: fsan ground VIDEO "a sentence" --checkpoint {out / "best.pt"}')
        return Trained(out, summary, None, started)
    try:
        result = evaluation.evaluate_split(dataset, store, "test", checkpoint=out / "best.pt",
                                           top_k=cfg.eval.top_k, seed=cfg.train.seed,
                                           device=summary["device"], with_baselines=with_baselines)
    except KeyboardInterrupt:
        raise fit.scoring_interrupted(out) from None
    return Trained(out, summary, result, started)
