"""Scoring a split: predictions from a checkpoint (through the Predictor), a predictions file or a
baseline, scored by the benchmark's protocol beside the random and prior baselines.

`evaluate_split` is quiet and returns an `Evaluation`; `fsan evaluate` and `fsan train` render it
with `show`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fsan_cli.core import checkpoint as checkpoints
from fsan_cli.core.errors import FsanError
from fsan_cli.core.output import log, print_json, stdout_console, warn
from fsan_cli.data.datasets import read_store
from fsan_cli.data.store import Query, Store
from fsan_cli.evaluate import baselines, breakdown
from fsan_cli.evaluate.breakdown import LengthBreakdown
from fsan_cli.evaluate.metrics import metric_keys, protocol
from fsan_cli.evaluate.plots import save_length_plot
from fsan_cli.evaluate.predictions import (
    check_save_path,
    moments_problem,
    read_predictions,
    write_predictions,
)
from fsan_cli.evaluate.report import DATASET_NAMES, PAPER_TABLES, length_table, results_table
from fsan_cli.evaluate.scoring import check_annotated, score, score_details
from fsan_cli.predict import windows
from fsan_cli.predict.predictor import Predictor


@dataclass
class Evaluation:
    dataset: str
    split: str
    queries: int
    predicted: int
    label: str  # the table row of what was scored
    metrics: dict[str, float]  # percent
    baselines: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    caption: str = ""
    by_length: LengthBreakdown | None = None  # the metrics by video length, when asked
    # a checkpoint's answers with the span prior: the model's own metrics, w and the share of
    # queries whose top-1 answer the prior changed
    without_prior: dict[str, float] | None = None
    prior_weight: float | None = None
    prior_changed: float | None = None
    thresholds: tuple[float, ...] | None = None  # IoU thresholds asked for instead of the protocol's
    nms: float | None = None  # the NMS IoU behind the scored moments' ranks (R@k), where the rows say

    def summary(self) -> dict[str, Any]:
        """The --json object: the split, counts and each metric in percent (and by length)."""
        keys = metric_keys(self.dataset, self.thresholds)
        out = {"dataset": self.dataset, "split": self.split, "queries": self.queries,
               "predicted": self.predicted, **{k: round(self.metrics[k], 4) for k in keys}, "nms": self.nms}
        if self.without_prior is not None:
            out["span_prior_weight"] = self.prior_weight
            out["span_prior_changed"] = round(self.prior_changed or 0.0, 4)
            out["without_span_prior"] = {k: round(self.without_prior[k], 4) for k in keys}
        if self.by_length is not None:
            out["by_length"] = self.by_length.as_json()
            out["by_length_buckets"] = self.by_length.source
        return out


def evaluate_split(dataset: str, store: Store, split: str, *, checkpoint: Path | None = None,
                   predictions: str | None = None, baseline: str | None = None,
                   save_predictions: Path | None = None, top_k: int = 5, seed: int = 0,
                   device: Any = None, with_baselines: bool = True,
                   by_length: bool = False, overwrite: bool = False,
                   span_prior: bool = True, thresholds: tuple[float, ...] | None = None,
                   nms: float | None = None) -> Evaluation:
    """Score one source (exactly one of checkpoint, predictions, baseline) on `split`; the
    random and prior baselines on the same split beside it unless with_baselines is False;
    with by_length, its metrics by video length too (fsan_cli/evaluate/breakdown.py). save_predictions
    never replaces a file it reads, nor an existing file unless `overwrite`. span_prior=False
    answers with the checkpoint's model alone, without its span prior. `thresholds` replaces the
    protocol's IoU thresholds; `nms` the checkpoint's eval.nms for its top-k (1: none)."""
    if split not in store.splits and not any(q.times or q.extra.get("chunks")
                                             for qs in store.splits.values() for q in qs):
        raise FsanError(f"the data at {store.path} has no times to score: its sentences carry none "
                        "(the weakly supervised case)", 'Add "times" and "split": "test" to the lines to '
                        "score and prepare again, or ground the videos with fsan ground")
    queries = store.split(split)
    check_annotated(dataset, queries)  # before predicting, which can take a while
    if save_predictions is not None:
        check_save_path(save_predictions, overwrite, _read_files(store, checkpoint, predictions))
    src = _rows(dataset, store, queries, split, checkpoint, predictions, baseline, top_k, seed, device,
                span_prior, nms)
    rows, own = src.rows, src.own
    if own is not None and not span_prior:  # --no-span-prior on a file of prior-aware answers
        rows, own = own, None
    if save_predictions is not None:
        write_predictions(save_predictions, rows, overwrite)
        log(f"Wrote {len(rows)} predictions to {save_predictions}")
    metrics, warnings, predicted = score_details(dataset, queries, rows, in_split_order=predictions is None,
                                                 thresholds=thresholds)
    if predictions is not None:
        log(f"Matched {predicted} of {len(rows)} prediction rows to the {len(queries)} queries of {split}")
    for message in warnings:
        warn(message)
    prior_source = _prior_source(store, split)
    caption = _caption(dataset, split, len(queries), predicted, src.nms, top_k, seed, prior_source)
    if checkpoint is not None:
        caption += f"\nCheckpoint: {checkpoint}"
    beside = (_baseline_rows(dataset, store, queries, split, top_k, seed, baseline, thresholds)
              if with_baselines else [])
    lengths = None
    if by_length:
        lengths = breakdown.by_length(dataset, queries, breakdown.matched_rows(dataset, queries, rows))
    result = Evaluation(dataset, split, len(queries), predicted, src.label, metrics, beside, caption, lengths,
                        thresholds=thresholds, nms=_nms_of(rows))
    if own is not None:  # prior-aware answers: the model's own beside them
        result.without_prior = score_details(dataset, queries, own, in_split_order=predictions is None,
                                             thresholds=thresholds)[0]
        result.prior_weight, result.prior_changed = src.prior_weight, src.changed_share
        if checkpoint is not None:
            result.label = "FSAN + span prior (this run)"
        result.baselines.insert(0, (f"{'FSAN' if checkpoint is not None else 'the same'} without span prior",
                                    result.without_prior))
        result.caption += (f"\nSpan prior: SC + {result.prior_weight:g} log p(s, e), p the train spans' "
                           f"distribution, the weight chosen on val; it changed the top-1 answer of "
                           f"{result.prior_changed:.1f}% of the queries.")
    return result


def model_own_rows(rows: list[dict]) -> list[dict] | None:
    """The model's own answers of prior-aware rows (Answers.row: "span_prior" holds the weight
    and whether it changed the top-1 answer, "model_moments" the model's own moments; files
    written before that name held them as "span_prior"."moments"), or None when no row is
    prior-aware. A malformed row, or a file where only some rows are, is an error naming a row."""
    aware = ["span_prior" in row for row in rows]
    if not any(aware):
        return None
    if not all(aware):
        i = aware.index(False) + 1
        raise FsanError(f'prediction row {i} has no "span_prior" field, though other rows of the file do',
                        'Score a file whose rows all come from one run (fsan evaluate --save-predictions)')
    own = []
    for i, row in enumerate(rows, 1):
        prior = row["span_prior"]
        weight = prior.get("weight") if isinstance(prior, dict) else None
        moments = row.get("model_moments", prior.get("moments") if isinstance(prior, dict) else None)
        ok = (isinstance(prior, dict) and isinstance(moments, list) and isinstance(prior.get("changed"), bool)
              and isinstance(weight, int | float) and not isinstance(weight, bool)
              and math.isfinite(weight) and weight >= 0)
        if not ok:
            raise FsanError(
                f'prediction row {i} has a malformed "span_prior" (it needs "weight", a number >= 0, '
                '"changed", true or false, and "model_moments" beside it, the model\'s own [start, end, '
                'score] list)', 'Fix the row, or drop its "span_prior" and "model_moments" fields')
        duration = row.get("duration")  # a number >= 0 or None in a row read_predictions passed
        problem = moments_problem(moments, duration if isinstance(duration, int | float) else None)
        if problem:  # checked as the row's own "moments" are
            key = "model_moments" if "model_moments" in row else "span_prior.moments"
            raise FsanError(f'prediction row {i} has a malformed "{key}": {problem}',
                            'Fix the row, or drop its "span_prior" and "model_moments" fields')
        own.append({**row, "moments": moments})
    return own


@dataclass
class Source:
    """The rows to score, what they are (the table's label, their NMS) and, for prior-aware
    answers, the model's own rows, the span prior's weight and the share of top-1 answers it
    changed (percent)."""

    rows: list[dict]
    label: str
    nms: str
    own: list[dict] | None = None
    prior_weight: float | None = None
    changed_share: float | None = None


def store_to_score(dataset: str, data_dir: Path, checkpoint: Path | None) -> Store:
    """data_dir/dataset as it is; of the synthetic benchmark (one store per N_v), the one of the
    checkpoint's N_v."""

    clips = None
    if dataset == "synthetic" and checkpoint is not None:
        try:
            clips = int(checkpoints.load(checkpoint)["data"]["clips"])
        except FsanError:  # the Predictor says what is wrong with the file, after the store's checks
            clips = None
    return read_store(dataset, data_dir, clips)


def _read_files(store: Store, checkpoint: Path | None, predictions: str | None) -> dict[str, Path | None]:
    """What evaluate_split reads, by description: --save-predictions may be none of them."""
    files: dict[str, Path | None] = {
        "the --checkpoint": checkpoint,
        "the --predictions file": None if predictions in (None, "-") else Path(predictions),
    }
    for f in sorted(Path(store.path).iterdir()):
        files[f"{f.name} of the prepared store at {store.path}"] = f
    return files


def show(result: Evaluation, as_json: bool = False, metric: str | None = None,
         extra_json: dict[str, Any] | None = None, plot: Path | None = None) -> None:
    """One metric alone, one JSON object, or the table with the baselines and the paper's rows
    (then the table by video length, when it was computed); `plot` saves its bar chart."""
    if metric is not None:
        print(f"{result.metrics[metric]:.2f}")
    elif as_json:
        print_json({**result.summary(), **(extra_json or {})})
    else:
        rows = [(result.label, result.metrics), *result.baselines]
        console = stdout_console()
        console.print(results_table(result.dataset, rows, caption=result.caption, thresholds=result.thresholds))
        if result.by_length is not None:
            console.print()
            console.print(length_table(result.dataset, result.by_length.buckets,
                                       caption=f"{result.label}, split {result.split}. "
                                               f"{result.by_length.source}"))
    if plot is not None and result.by_length is not None:
        name = DATASET_NAMES.get(result.dataset, result.dataset)
        save_length_plot(plot, result.dataset, result.by_length.buckets,
                         f"{name} {result.split} by video length: {result.label}")


def _rows(dataset: str, store: Store, queries: list[Query], split: str, checkpoint, predictions,
          baseline, top_k: int, seed: int, device, span_prior: bool = True, nms: float | None = None) -> Source:
    """This run's prediction rows, what they are and, for prior-aware answers, the model's own."""
    if checkpoint is not None:
        device = torch.device("cpu") if device is None else device
        log(f"Predicting {len(queries)} queries of {dataset} {split} with {checkpoint}")
        predictor = Predictor.load(checkpoint, device, span_prior=span_prior, nms=nms)
        answers = windows.answer_split(predictor, store, queries, top_k)
        rows = answers.rows(queries, top_k)
        own = model_own_rows(rows) if answers.prior_weight is not None else None
        return Source(rows, "FSAN (this run)", _row_nms(rows, "the checkpoint's eval.nms"), own,
                      answers.prior_weight, answers.changed_share)
    if predictions is not None:
        rows = read_predictions(predictions)
        name = "stdin" if predictions == "-" else predictions
        own = model_own_rows(rows)
        weight = changed = None
        if own is not None:  # the weight and changes as the file records them
            weight = float(rows[0]["span_prior"]["weight"])
            changed = 100 * sum(row["span_prior"]["changed"] for row in rows) / len(rows)
        return Source(rows, f"predictions ({name})", _row_nms(rows, "as in the file"), own, weight, changed)
    if baseline == "random":
        rows = baselines.random_predictions(queries, top_k, seed, dataset)
        return Source(rows, f"Random, seed {seed} (this run)", "none")
    source = _prior_source(store, split)
    if source is None:
        raise FsanError(f"the store at {store.path} has no train split to choose the prior on",
                        "Run `fsan prepare` with the train annotations")
    rows = baselines.prior_predictions(store.splits[source], queries, top_k, dataset)
    return Source(rows, f"Prior on {source} (this run)", _prior_nms(dataset))


def _nms_of(rows: list[dict]) -> float | None:
    """The one NMS threshold the rows name in an optional "nms" key, else None."""
    values = {row.get("nms") for row in rows if "nms" in row}
    value = values.pop() if len(values) == 1 else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _row_nms(rows: list[dict], default: str) -> str:
    """The NMS threshold the rows name in an optional "nms" key, else `default`."""
    value = _nms_of(rows)
    return default if value is None else "none" if value >= 1 else f"IoU {value:g}"


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
                   seed: int, skip: str | None, thresholds: tuple[float, ...] | None = None,
                   ) -> list[tuple[str, dict[str, float]]]:
    out = []
    if skip != "random":
        rows = baselines.random_predictions(queries, top_k, seed, dataset)
        out.append((f"Random (seed {seed})", score(dataset, queries, rows, thresholds)[0]))
    source = _prior_source(store, split)
    if skip != "prior" and source is None:
        warn("the store has no train split, so the table has no prior row")
    elif skip != "prior":
        rows = baselines.prior_predictions(store.splits[source], queries, top_k, dataset)
        out.append((f"Prior (best fixed segment on {source})", score(dataset, queries, rows, thresholds)[0]))
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
