"""The prior-aware answer: the model's segment scores plus a weighted log-prior of where moments
lie, learned from the train split's spans.

Where the alignment map is flat (a caption whose words respond evenly over the whole video),
every segment scores about the same and the model's top answer is noise; the blind baselines
of Otani et al. (BMVC 2020) show how much the distribution of (start, length) relative to the
duration alone knows. The answer here is the segment with the highest

    SC(s, e) + w * log p(s, e)

where p is the share of train moments that fall on segment [s, e] of the N_v-clip grid
(add-one smoothed over the N_v (N_v + 1) / 2 segments). A sharp map outweighs the prior; a
flat one defers to it. The weight w is chosen on val at the end of `fsan train`, among
WEIGHTS (0 included, so the prior is only used when it wins there), never on test, and stored
in the checkpoint with the prior; `fsan evaluate` shows the model with and without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SMOOTHING = 1.0  # add-one: every segment keeps some prior mass
# candidate weights, chosen on val; SC is a difference of cosine means (|SC| < 2) and log p
# spans about -2 (the most common span) to -10 (a span never seen in 10,000 moments), so from
# 1 on the prior decides nearly alone (an untrained model's val choice)
WEIGHTS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


@dataclass
class SpanPrior:
    log_prior: np.ndarray  # (Nv, Nv) float32 log p(s, e) for s <= e; 0 below the diagonal
    weight: float  # w, chosen on val
    choices: list[tuple[float, float]]  # (w, val objective) of every candidate
    moments: int  # train moments it was learned from

    def to_payload(self) -> dict[str, Any]:
        """The checkpoint's "span_prior" entry: tensors and plain values (weights_only)."""
        return {"log_prior": torch.from_numpy(self.log_prior), "weight": float(self.weight),
                "choices": [[float(w), float(v)] for w, v in self.choices], "moments": int(self.moments),
                "chosen_on": "val"}

    @classmethod
    def of(cls, entry: dict[str, Any] | None, source: Any = "the checkpoint") -> SpanPrior | None:
        """The checkpoint's entry, checked: a square finite log-prior and a finite weight >= 0."""
        if not entry:
            return None
        from fsan_cli.core.errors import FsanError

        try:
            log_prior = entry["log_prior"]
            log_prior = np.asarray(log_prior.numpy() if torch.is_tensor(log_prior) else log_prior, np.float32)
            prior = cls(log_prior, float(entry["weight"]),
                        [(float(w), float(v)) for w, v in entry.get("choices", [])], int(entry.get("moments", 0)))
        except (KeyError, TypeError, ValueError, AttributeError):
            prior = None
        if (prior is None or prior.log_prior.ndim != 2 or prior.log_prior.shape[0] != prior.log_prior.shape[1]
                or not np.isfinite(prior.log_prior).all() or not np.isfinite(prior.weight) or prior.weight < 0):
            raise FsanError(f"the span prior stored in {source} is damaged",
                            "Answer without it (--no-span-prior), or train again")
        return prior


    @classmethod
    def in_checkpoint(cls, ckpt: dict[str, Any], path: Any, clips: int) -> SpanPrior | None:
        """The checkpoint's span prior where it is used (a weight > 0), else None; one that does
        not fit the model's N_v is said and left out, and so is said a checkpoint of a run that
        learns one but holds none (last.pt: fsan train stores the prior in best.pt)."""
        from fsan_cli.core.checkpoint import settings_of
        from fsan_cli.core.output import log, warn

        entry = ckpt.get("span_prior")
        if entry is None:
            if settings_of(ckpt).eval.span_prior and ckpt["data"].get("dataset") != "didemo":
                log(f"{path} holds no span prior (fsan train stores it in best.pt at the end of a run); "
                    "answers are the model's own")
            return None
        prior = cls.of(entry, path)
        if prior is not None and prior.log_prior.shape[0] != clips:
            warn(f"the span prior in {path} is for {prior.log_prior.shape[0]} clips, the model has {clips}; "
                 "answers are the model's own")
            return None
        return prior if prior is not None and prior.weight > 0 else None


def segment_cells(moments: np.ndarray, clips: int) -> np.ndarray:
    """(M, 2) moments relative to their duration, in [0, 1] -> (M,) flat index s * Nv + e of
    the grid segment each covers: clip j spans [j, j + 1) / Nv, so s = floor(start * Nv) and
    e = ceil(end * Nv) - 1, kept inside the grid and at s <= e."""
    rel = np.clip(moments, 0.0, 1.0)
    s = np.clip(np.floor(rel[:, 0] * clips), 0, clips - 1).astype(np.int64)
    e = np.clip(np.ceil(rel[:, 1] * clips) - 1, 0, clips - 1).astype(np.int64)
    return s * clips + np.maximum(e, s)


def learn(queries: Sequence[Any], clips: int) -> tuple[np.ndarray, int]:
    """(log p (Nv, Nv), number of moments) from the queries' annotated spans: the share of
    moments on each segment, add-one smoothed over the valid ones; 0 below the diagonal."""
    rel = np.array([[a / q.duration, b / q.duration] for q in queries if q.duration > 0
                    for a, b in q.times], np.float64).reshape(-1, 2)
    counts = np.bincount(segment_cells(rel, clips), minlength=clips * clips).reshape(clips, clips)
    valid = np.triu(np.ones((clips, clips), bool))
    mass = np.where(valid, counts + SMOOTHING, 0.0)
    log_prior = np.where(valid, np.log(mass / mass.sum(), where=valid, out=np.zeros_like(mass)), 0.0)
    return log_prior.astype(np.float32), len(rel)


def objective(dataset: str, ious: np.ndarray) -> float:
    """What the weight maximises on val: the mean of the dataset's R@1 figures (its IoU
    thresholds) and mIoU, in percent: the table's top-1 columns, each counted once."""
    from fsan_cli.evaluate.metrics import protocol

    thresholds = protocol(dataset).get("thresholds", (0.3, 0.5, 0.7))
    values = [100 * float((ious >= t).mean()) for t in thresholds] + [100 * float(ious.clip(0).mean())]
    return float(np.mean(values))


def choose(grid: np.ndarray, log_prior: np.ndarray, durations: np.ndarray, times: list, dataset: str,
           weights: Sequence[float] = WEIGHTS) -> list[tuple[float, float]]:
    """(w, val objective) of each weight: grid (Q, S) the queries' scores of the S valid
    segments (row-major s <= e, as `valid_cells`), their durations and annotated times."""
    from fsan_cli.evaluate.metrics import top1_iou

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


def valid_cells(clips: int) -> np.ndarray:
    """Flat indices s * Nv + e of the valid segments s <= e, row-major."""
    s, e = np.triu_indices(clips)
    return s * clips + e


def fit_checkpoint(path: Path, store: Any, device: torch.device, dataset: str | None = None) -> SpanPrior | None:
    """Learn the span prior on the store's train split, choose its weight on val with the
    checkpoint's model, and write both into the checkpoint (atomically). None, and the
    checkpoint untouched, where there is no val split or no train moments, or for DiDeMo (its
    protocol ranks all 21 segments; its own frequency prior is a baseline beside it)."""
    from fsan_cli.core import checkpoint
    from fsan_cli.predict.predictor import Predictor
    from fsan_cli.train.loop import video_rows

    dataset = dataset or store.manifest.get("dataset") or "custom"
    train_q = store.splits.get("train") or []
    val_q = [q for q in store.splits.get("val") or [] if q.times]  # the weight is scored on these
    if dataset == "didemo" or not val_q or not train_q:
        return None
    predictor = Predictor.load(path, device)
    predictor.span_prior = None  # the model's own scores
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
