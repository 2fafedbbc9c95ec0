"""`fsan evaluate`: score a checkpoint, a predictions file or a baseline under the dataset's protocol."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from fsan_cli.commands.options import (
    CheckpointOpt,
    DataDirOpt,
    DatasetOpt,
    JsonOpt,
    SpanPriorOpt,
    TopKOpt,
)
from fsan_cli.core.errors import FsanError, UsageError, handle_errors
from fsan_cli.evaluate.predictions import FORMAT_HELP


class Split(StrEnum):
    val = "val"
    test = "test"


class Baseline(StrEnum):
    random = "random"
    prior = "prior"


@handle_errors
def evaluate(
    dataset: DatasetOpt = "synthetic",
    data_dir: DataDirOpt = Path("data"),
    split: Annotated[Split, typer.Option("--split", help="The split to score.")] = Split.test,
    checkpoint: CheckpointOpt = None,
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
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Let --save-predictions and --plot replace an existing file.")
    ] = False,
    as_json: JsonOpt = False,
    metric: Annotated[
        str | None,
        typer.Option("--metric", metavar="NAME", help="Print this one metric alone, e.g. rank@5."),
    ] = None,
    top_k: TopKOpt = 5,
    span_prior: SpanPriorOpt = True,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random baseline.")] = 0,
    by_length: Annotated[
        bool, typer.Option("--by-length", help="Also the metrics by video length (paper Figure 4).")
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", metavar="FILE.png",
                     help="Save a bar chart of R@1 by video length (implies --by-length; needs matplotlib)."),
    ] = None,
    iou: Annotated[
        str | None,
        typer.Option("--iou", metavar="T,T,...",
                     help="R@k at these IoU thresholds instead of the protocol's, e.g. 0.3,0.5,0.7."),
    ] = None,
    nms: Annotated[
        float | None,
        typer.Option("--nms", metavar="IOU", min=0.0, max=1.0,
                     help="NMS of a checkpoint's top-k moments (default its eval.nms; 1: none)."),
    ] = None,
) -> None:
    """Score a checkpoint, a predictions file or a baseline on a split, by the benchmark's protocol.

    With none of --checkpoint, --predictions and --baseline, the newest run of the dataset under
    runs/ is scored (its best.pt).

    ActivityNet-Captions, synthetic, custom: R@{1,5} at IoU {0.1,0.3,0.5} and mIoU of the top-1
    moment; Charades-STA: IoU {0.3,0.5,0.7}; DiDeMo: the official Rank@1, Rank@5 and mIoU. All in
    percent; --iou T,T,... scores R@k at other IoU thresholds, and --nms 1 a checkpoint's top-k
    without NMS. The table shows the paper's rows, this run, and the random and prior baselines
    computed on the same split; a checkpoint with a span prior, also the model without it. --save-predictions FILE never replaces a file the command reads
    (the checkpoint, the predictions, the store), nor any existing file without --overwrite.
    """
    from fsan_cli.core.device import resolve_device
    from fsan_cli.core.output import log
    from fsan_cli.core.state import STATE
    from fsan_cli.evaluate.evaluation import evaluate_split, show, store_to_score
    from fsan_cli.evaluate.metrics import asked_thresholds, metric_keys
    from fsan_cli.train import runs

    thresholds = asked_thresholds(dataset, iou, metric)
    _check_options(metric_keys(dataset, thresholds), dataset, checkpoint, predictions, baseline,
                   save_predictions, as_json, metric, nms)
    _check_length_options(by_length, plot, metric, (checkpoint, Path(predictions) if predictions not in (None, "-") else None),
                          overwrite)
    if checkpoint is predictions is baseline is None:
        checkpoint = runs.find_checkpoint(dataset=dataset)
        log(f"Checkpoint: {checkpoint} (the newest run of {dataset}; --checkpoint, --predictions "
            "or --baseline picks another)")
    store = store_to_score(dataset, data_dir, checkpoint)
    device = resolve_device(STATE.device) if checkpoint is not None else None
    result = evaluate_split(dataset, store, split.value, checkpoint=checkpoint,
                            predictions=predictions, baseline=baseline and baseline.value,
                            save_predictions=save_predictions, top_k=top_k, seed=seed,
                            device=device, with_baselines=not (as_json or metric),
                            by_length=by_length or plot is not None, overwrite=overwrite,
                            span_prior=span_prior, thresholds=thresholds, nms=nms)
    show(result, as_json, metric, plot=plot)


def _check_options(keys, dataset, checkpoint, predictions, baseline, save, as_json, metric, nms=None) -> None:
    given = [n for n, v in (("--checkpoint", checkpoint), ("--predictions", predictions),
                            ("--baseline", baseline)) if v is not None]
    if nms is not None and (predictions is not None or baseline is not None):
        raise UsageError("--nms chooses a checkpoint's top-k, and --predictions or --baseline has its own",
                         "Drop --nms, or score a checkpoint")
    if len(given) > 1:
        raise UsageError(
            f"pass one of --checkpoint, --predictions or --baseline (got {' and '.join(given)})",
            "For example: fsan evaluate --dataset didemo --predictions preds.jsonl",
        )
    if metric is not None and metric not in keys:
        raise FsanError(f"unknown metric '{metric}' for {dataset}", f"Use one of: {', '.join(keys)}")
    if metric is not None and as_json:
        raise UsageError("--metric and --json both choose what stdout carries", "Pass only one")
    if save is not None and str(save) == "-":
        raise UsageError("--save-predictions - would mix predictions with the results on stdout",
                        "Give a file name")
    if save is not None:  # fail before predicting, not after; missing folders are made when it is written
        from fsan_cli.core.atomic import check_folder_of

        check_folder_of(save, "--save-predictions")
    if checkpoint is not None:  # a folder, a broken link, a FIFO: said as ground says it
        from fsan_cli.core.checkpoint import check_path

        check_path(checkpoint)


def _check_length_options(by_length: bool, plot: Path | None, metric: str | None,
                          inputs: tuple[Path | None, ...], overwrite: bool = False) -> None:
    if metric is not None and (by_length or plot is not None):
        raise UsageError("--metric prints one number, which has no breakdown by video length",
                        "Drop --by-length and --plot, or --metric")
    if plot is not None:  # fail before predicting, not after
        from fsan_cli.evaluate.plots import check_plot

        check_plot(plot, inputs, overwrite)
