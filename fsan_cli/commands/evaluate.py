"""`fsan evaluate`: score a checkpoint, a predictions file or a baseline under the dataset's protocol."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from fsan_cli import baselines
from fsan_cli.data.store import Query, Store, load_store
from fsan_cli.errors import FsanError, handle_errors
from fsan_cli.metrics import check_annotated, protocol, score, score_details
from fsan_cli.output import log, print_json, stdout_console, warn
from fsan_cli.predictions import FORMAT_HELP, read_predictions, write_predictions
from fsan_cli.report import PAPER_TABLES, metric_names, results_table


class Split(StrEnum):
    val = "val"
    test = "test"


class Baseline(StrEnum):
    random = "random"
    prior = "prior"


@handle_errors
def evaluate(
    dataset: Annotated[
        str, typer.Option("--dataset", metavar="NAME", help="activitynet, didemo, charades, synthetic or custom.")
    ] = "synthetic",
    data_dir: Annotated[
        Path,
        typer.Option("--data-dir", envvar="FSAN_DATA_DIR", help="Prepared stores; reads DIR/<dataset>."),
    ] = Path("data"),
    split: Annotated[Split, typer.Option("--split", help="The split to score.")] = Split.test,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Predict with this model, then score.")
    ] = None,
    predictions: Annotated[
        str | None,
        typer.Option("--predictions", metavar="FILE|-", help=f"Score this file ({FORMAT_HELP})."),
    ] = None,
    baseline: Annotated[
        Baseline | None, typer.Option("--baseline", help="Score a baseline instead of a model.")
    ] = None,
    save_predictions: Annotated[
        Path | None, typer.Option("--save-predictions", metavar="FILE", help="Write what was scored.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object: the metrics in percent.")
    ] = False,
    metric: Annotated[
        str | None,
        typer.Option("--metric", metavar="NAME", help="Print this one metric alone, e.g. rank@5."),
    ] = None,
    top_k: Annotated[
        int, typer.Option("--top-k", min=1, help="Moments per query (model, baselines).")
    ] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random baseline.")] = 0,
) -> None:
    """Score a checkpoint, a predictions file or a baseline on a split, by the benchmark's protocol.

    ActivityNet-Captions, synthetic, custom: R@{1,5} at IoU {0.1,0.3,0.5} and mIoU of the top-1
    moment; Charades-STA: IoU {0.3,0.5,0.7}; DiDeMo: the official Rank@1, Rank@5 and mIoU. All in
    percent. The table shows the paper's rows, this run, and the random and prior baselines
    computed on the same split.
    """
    keys = metric_names(dataset)
    _check_options(keys, dataset, checkpoint, predictions, baseline, save_predictions, as_json, metric)
    store = load_store(data_dir / dataset, mmap=True)
    run_evaluation(dataset, store, split.value, checkpoint, predictions, baseline, save_predictions,
                   as_json, metric, top_k, seed)


def run_evaluation(dataset: str, store: Store, split: str, checkpoint: Path | None = None,
                   predictions: str | None = None, baseline: Baseline | None = None,
                   save_predictions: Path | None = None, as_json: bool = False,
                   metric: str | None = None, top_k: int = 5, seed: int = 0,
                   extra_json: dict | None = None) -> dict[str, float]:
    """Score one source on `split` and print the table, JSON or one metric (also used by train)."""
    keys = metric_names(dataset)
    queries = store.split(split)
    check_annotated(dataset, queries)  # before predicting, which can take a while
    rows, label, nms = _run_rows(dataset, store, queries, split, checkpoint, predictions,
                                 baseline, top_k, seed)
    if save_predictions is not None:
        write_predictions(save_predictions, rows)
        log(f"Wrote {len(rows)} predictions to {save_predictions}")
    metrics, warnings, predicted = score_details(dataset, queries, rows)
    for message in warnings:
        warn(message)
    if metric is not None:
        print(f"{metrics[metric]:.2f}")
    elif as_json:
        print_json({"dataset": dataset, "split": split, "queries": len(queries),
                    "predicted": predicted, **{k: round(metrics[k], 4) for k in keys},
                    **(extra_json or {})})
    else:
        table_rows = [(label, metrics)]
        table_rows += _baseline_rows(dataset, store, queries, split, top_k, seed, baseline)
        caption = _caption(dataset, split, len(queries), predicted, nms, top_k, seed,
                           _prior_source(store, split))
        if checkpoint is not None:
            caption += f"\nCheckpoint: {checkpoint}"
        stdout_console().print(results_table(dataset, table_rows, caption=caption))
    return metrics


def _check_options(keys, dataset, checkpoint, predictions, baseline, save, as_json, metric) -> None:
    given = [n for n, v in (("--checkpoint", checkpoint), ("--predictions", predictions),
                            ("--baseline", baseline)) if v is not None]
    if len(given) != 1:
        what = "none" if not given else " and ".join(given)
        raise FsanError(
            f"pass exactly one of --checkpoint, --predictions or --baseline (got {what})",
            "For example: fsan evaluate --dataset didemo --predictions preds.jsonl",
        )
    if metric is not None and metric not in keys:
        raise FsanError(f"unknown metric '{metric}' for {dataset}", f"Use one of: {', '.join(keys)}")
    if metric is not None and as_json:
        raise FsanError("--metric and --json both choose what stdout carries", "Pass only one")
    if save is not None and str(save) == "-":
        raise FsanError("--save-predictions - would mix predictions with the results on stdout",
                        "Give a file name")
    if save is not None and not save.parent.is_dir():  # fail before predicting, not after
        raise FsanError(f"folder {save.parent} does not exist", "Create it first, or fix --save-predictions")
    if checkpoint is not None and not checkpoint.is_file():
        raise FsanError(f"checkpoint {checkpoint} does not exist", "Check the path (e.g. runs/x/best.pt)")


def _run_rows(dataset: str, store: Store, queries: list[Query], split: str, checkpoint, predictions,
              baseline, top_k: int, seed: int) -> tuple[list[dict], str, str]:
    """This run's prediction rows, its table label, and what NMS produced them."""
    if checkpoint is not None:
        from fsan_cli.device import resolve_device
        from fsan_cli.engine import predict_queries
        from fsan_cli.state import STATE

        log(f"Predicting {len(queries)} queries of {dataset} {split} with {checkpoint}")
        rows = predict_queries(checkpoint, store, queries, resolve_device(STATE.device), top_k)
        return rows, "FSAN (this run)", _row_nms(rows, "the checkpoint's eval.nms")
    if predictions is not None:
        rows = read_predictions(predictions)
        name = "stdin" if predictions == "-" else predictions
        return rows, f"predictions ({name})", _row_nms(rows, "as in the file")
    if baseline is Baseline.random:
        rows = baselines.random_predictions(queries, top_k, seed, dataset)
        return rows, f"Random, seed {seed} (this run)", "none"
    source = _prior_source(store, split)
    if source is None:
        raise FsanError(f"the store at {store.path} has no train split to choose the prior on",
                        "Run `fsan prepare` with the train annotations")
    rows = baselines.prior_predictions(store.splits[source], queries, top_k, dataset)
    return rows, f"Prior on {source} (this run)", _prior_nms(dataset)


def _row_nms(rows: list[dict], default: str) -> str:
    """The NMS threshold the rows name in an optional "nms" key, else `default`."""
    values = {row.get("nms") for row in rows if "nms" in row}
    if len(values) == 1:
        value = values.pop()
        if isinstance(value, int | float):
            return f"IoU {value:g}"
    return default


def _prior_nms(dataset: str) -> str:
    return "none" if dataset == "didemo" else f"IoU {baselines.PRIOR_NMS:g} in relative time"


def _prior_source(store: Store, split: str) -> str | None:
    """train; else val when scoring test (the DiDeMo train annotations may be absent)."""
    if store.splits.get("train"):
        return "train"
    if split == "test" and store.splits.get("val"):
        return "val"
    return None


def _baseline_rows(dataset: str, store: Store, queries: list[Query], split: str, top_k: int,
                   seed: int, skip: Baseline | None) -> list[tuple[str, dict[str, float]]]:
    out = []
    if skip is not Baseline.random:
        rows = baselines.random_predictions(queries, top_k, seed, dataset)
        out.append((f"Random (seed {seed})", score(dataset, queries, rows)[0]))
    source = _prior_source(store, split)
    if skip is not Baseline.prior and source is None:
        warn("the store has no train split, so the table has no prior row")
    elif skip is not Baseline.prior:
        rows = baselines.prior_predictions(store.splits[source], queries, top_k, dataset)
        out.append((f"Prior (best fixed segment on {source})", score(dataset, queries, rows)[0]))
    return out


def _caption(dataset: str, split: str, n: int, predicted: int, nms: str, top_k: int, seed: int,
             prior_source: str | None) -> str:
    src = prior_source or "train"
    if protocol(dataset)["kind"] == "didemo":
        lines = [
            "Official DiDeMo protocol: every query ranks all 21 segments; Rank@k: share of queries "
            "whose 3 best annotator ranks average <= k; mIoU: mean of the 3 best IoUs of the top-1 "
            "segment (chunk units, inclusive ends).",
        ]
        random, prior = "a uniformly random ranking", f"segments ranked by frequency in the {src} annotations"
    else:
        lines = ["A hit is IoU >= threshold with any annotated moment; mIoU: mean IoU of the top-1 moment."]
        random = "start ~ U(0, D), end ~ U(start, D)"
        prior = f"fixed relative segments best by mean IoU on {src}, top-{top_k} after NMS at IoU 0.5"
    lines.append(f"Split {split}: {predicted} of {n} queries predicted. NMS behind this run's "
                 f"moments: {nms}; evaluate applies none.")
    lines.append(f"Random: {random}, seed {seed}. Prior: {prior}.")
    if dataset in PAPER_TABLES:
        lines.append("(paper) rows: the paper's reported test-split numbers, not recomputed.")
    return "\n".join(lines)
