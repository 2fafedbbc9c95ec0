"""The span prior fitted at the end of `fsan train`: learned from the train split's spans, its
weight chosen on val with best.pt's model (never on test), both written into best.pt
(fsan_cli/predict/span_prior.py says how answers use it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsan_cli.core import checkpoint
from fsan_cli.data.store import video_rows
from fsan_cli.evaluate.metrics import protocol, top1_iou
from fsan_cli.predict.predictor import Predictor
from fsan_cli.predict.span_prior import SpanPrior, learn, valid_cells

# candidate weights, chosen on val; SC is a difference of cosine means (|SC| < 2) and log p
# spans about -2 (the most common span) to -10 (a span never seen in 10,000 moments), so from
# 1 on the prior decides nearly alone (an untrained model's val choice)
WEIGHTS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def objective(dataset: str, ious: np.ndarray) -> float:
    """What the weight maximises on val: the mean of the dataset's R@1 figures (its IoU
    thresholds) and mIoU, in percent: the table's top-1 columns, each counted once."""
    thresholds = protocol(dataset).get("thresholds", (0.3, 0.5, 0.7))
    values = [100 * float((ious >= t).mean()) for t in thresholds] + [100 * float(ious.clip(0).mean())]
    return float(np.mean(values))


def choose(grid: np.ndarray, log_prior: np.ndarray, durations: np.ndarray, times: list, dataset: str,
           weights: Sequence[float] = WEIGHTS) -> list[tuple[float, float]]:
    """(w, val objective) of each weight: grid (Q, S) the queries' scores of the S valid
    segments (row-major s <= e, as `valid_cells`), their durations and annotated times."""
    clips = log_prior.shape[0]
    cells = valid_cells(clips)
    prior = log_prior.reshape(-1)[cells]  # (S,)
    s, e = cells // clips, cells % clips
    out = []
    for w in weights:  # a handful of candidates, each vectorised over the queries
        best = np.argmax(grid + np.float32(w) * prior, axis=1)  # (Q,)
        seconds = np.stack([s[best], e[best] + 1], 1) * (durations[:, None] / clips)
        out.append((float(w), objective(dataset, top1_iou(seconds, times))))
    return out


def fit_checkpoint(path: Path, store: Any, device: torch.device, dataset: str | None = None) -> SpanPrior | None:
    """Learn the span prior on the store's train split, choose its weight on val with the
    checkpoint's model, and write both into the checkpoint (atomically). None, and the
    checkpoint untouched, where there is no val split or no train moments, or for DiDeMo (its
    protocol ranks all 21 segments; its own frequency prior is a baseline beside it)."""
    dataset = dataset or store.manifest.get("dataset") or "custom"
    train_q = store.splits.get("train") or []
    val_q = [q for q in store.splits.get("val") or [] if q.times]  # the weight is scored on these
    if dataset == "didemo" or not val_q or not train_q:
        return None
    predictor = Predictor.load(path, device, span_prior=False)  # the model's own scores
    log_prior, moments = learn(train_q, predictor.clips)
    if moments == 0:
        return None
    features = torch.from_numpy(np.asarray(store.features, dtype=np.float32)).to(device)
    grid = predictor.segment_grid(features, video_rows(store, val_q), predictor.encode([q.query for q in val_q]))
    durations = np.array([q.duration for q in val_q], np.float64)
    choices = choose(grid, log_prior, durations, [q.times for q in val_q], dataset)
    best = max(choices, key=lambda c: (c[1], -c[0]))  # ties: the smaller weight
    prior = SpanPrior(log_prior, best[0], choices, moments)
    ckpt = checkpoint.load(path)
    ckpt["span_prior"] = prior.to_payload()
    checkpoint.save(ckpt, path)
    return prior
