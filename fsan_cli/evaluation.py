"""Score a checkpoint on a split beside the two baselines (used by `train` and `evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fsan_cli.data.store import Store


def evaluate_splits(
    checkpoint: Path, store: Store, split: str, device: Any, top_k: int, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Metrics of the model, the seeded random baseline and the train-split prior on `split`."""
    from fsan_cli.baselines import prior_predictions, random_predictions
    from fsan_cli.engine import predict_queries
    from fsan_cli.metrics import score

    dataset = store.manifest.get("dataset", "custom")
    queries = store.split(split)
    preds = predict_queries(checkpoint, store, queries, device, top_k)
    results = {"model": score(dataset, queries, preds)[0]}
    results["random"] = score(dataset, queries, random_predictions(queries, top_k=top_k, seed=seed))[0]
    train_q = store.splits.get("train") or queries
    results["prior"] = score(
        dataset, queries, prior_predictions(train_q, queries, top_k=top_k, dataset=dataset)
    )[0]
    return results


def print_results(dataset: str, split: str, results: dict[str, dict[str, float]]) -> None:
    from fsan_cli.output import stdout_console
    from fsan_cli.report import results_table

    rows = [
        ("Random (seeded)", results["random"]),
        ("Prior (best fixed segment)", results["prior"]),
        ("FSAN (this run)", results["model"]),
    ]
    caption = f"{dataset} {split} split; IoU >= threshold counts as a hit; top-k after NMS."
    stdout_console().print(results_table(dataset, rows, paper_rows=True, caption=caption))
