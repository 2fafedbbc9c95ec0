"""The prior-aware answer: the model's segment scores plus a weighted log-prior of where moments
lie, learned from the train split's spans.

Where the alignment map is flat (a caption whose words respond evenly over the whole video),
every segment scores about the same and the model's top answer is noise; the blind baselines
of Otani et al. (BMVC 2020) show how much the distribution of (start, length) relative to the
duration alone knows. The answer here is the segment with the highest

    SC(s, e) + w * log p(s, e)

where p is the share of train moments that fall on segment [s, e] of the N_v-clip grid
(add-one smoothed over the N_v (N_v + 1) / 2 segments). A sharp map outweighs the prior; a
flat one defers to it. The weight w is chosen on val at the end of `fsan train`
(fsan_cli/train/span_prior_fit.py, 0 included, so the prior is only used when it wins there), never on test, and stored
in the checkpoint with the prior; `fsan evaluate` shows the model with and without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fsan_cli.core.checkpoint import settings_of
from fsan_cli.core.errors import FsanError
from fsan_cli.core.output import log, warn

SMOOTHING = 1.0  # add-one: every segment keeps some prior mass
# `fsan train` chooses the weight from a grid up to 2 (span_prior_fit.WEIGHTS); far above it the
# answers are the prior alone, so a larger stored weight is a damaged entry, not a choice
MAX_WEIGHT = 100.0


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
        """The checkpoint's entry, checked: an object holding a square finite log-prior whose
        valid cells (s <= e) are log-probabilities (<= 0), and a weight in [0, MAX_WEIGHT]."""
        if entry is None or (isinstance(entry, dict) and not entry):
            return None
        try:
            if not isinstance(entry, dict):  # e.g. a bare tensor
                raise TypeError
            log_prior = entry["log_prior"]
            log_prior = np.asarray(log_prior.numpy() if torch.is_tensor(log_prior) else log_prior, np.float32)
            prior = cls(log_prior, float(entry["weight"]),
                        [(float(w), float(v)) for w, v in entry.get("choices", [])], int(entry.get("moments", 0)))
        except (KeyError, TypeError, ValueError, AttributeError):
            prior = None
        if (prior is None or prior.log_prior.ndim != 2 or prior.log_prior.shape[0] != prior.log_prior.shape[1]
                or not np.isfinite(prior.log_prior).all() or not 0 <= prior.weight <= MAX_WEIGHT
                or (np.triu(prior.log_prior) > 0).any()):
            raise FsanError(f"the span prior stored in {source} is damaged",
                            "Answer without it (--no-span-prior), or train again")
        return prior

    @classmethod
    def in_checkpoint(cls, ckpt: dict[str, Any], path: Any, clips: int) -> SpanPrior | None:
        """The checkpoint's span prior where it is used (a weight > 0), else None; one that does
        not fit the model's N_v is said and left out, and so is said a checkpoint of a run that
        learns one but holds none (last.pt: fsan train stores the prior in best.pt)."""
        entry = ckpt.get("span_prior")
        if entry is None:
            chosen_on = ckpt.get("val")  # best.pt's val record: no val_miou, no times to learn a prior by
            timed = not isinstance(chosen_on, dict) or "val_miou" in chosen_on
            if settings_of(ckpt).eval.span_prior and ckpt["data"].get("dataset") != "didemo" and timed:
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


def valid_cells(clips: int) -> np.ndarray:
    """Flat indices s * Nv + e of the valid segments s <= e, row-major."""
    s, e = np.triu_indices(clips)
    return s * clips + e
