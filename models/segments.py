"""Segments [s, e] of clips (0 <= s <= e < N_v): the score of every segment at once (eq. 8), the
weights of eq. 10/12, and the top-k answer after NMS.

Everything is vectorised over the batch and the segments: prefix sums give every segment's sum
in one subtraction, and the top-k is k rounds of a batched greedy NMS. Clip j covers
[j, j + 1) * duration / N_v seconds.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

NEG_INF = -1e4  # finite "minus infinity": stays finite in bf16 and under softmax


def masked_token_min(p: Tensor, token_mask: Tensor) -> Tensor:
    """min over real tokens of P, per clip: (B, Ns, Nv) -> (B, Nv)."""
    return p.masked_fill(~token_mask[:, :, None], float("inf")).amin(1)


def segment_sums(x: Tensor) -> Tensor:
    """Sums of x over every clip segment [s, e] by prefix sums: (..., Nv) -> (..., Nv, Nv).

    Entry [s, e] is sum_{j=s..e} x_j for s <= e; entries with s > e are negative lengths'
    sums and must be masked by the caller.
    """
    c = F.pad(x.cumsum(-1), (1, 0))  # (..., Nv + 1)
    return c[..., None, 1:] - c[..., :-1, None]  # [s, e] = c[e + 1] - c[s]


def segment_geometry(nv: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(valid (Nv, Nv) bool for s <= e, length (Nv, Nv) = e - s + 1 as float)."""
    idx = torch.arange(nv, device=device)
    length = (idx[None, :] - idx[:, None] + 1).float()
    return length > 0, length


def segment_inner_mean(p: Tensor, token_mask: Tensor) -> Tensor:
    """First term of eq. 8: mean of P over real tokens and the clips of [s, e], (B, Nv, Nv)."""
    _, length = segment_geometry(p.shape[-1], p.device)
    tm = token_mask.to(p.dtype)
    col = (p * tm[:, :, None]).sum(1)  # (B, Nv)
    return segment_sums(col) / (tm.sum(1).clamp_min(1)[:, None, None] * length.clamp_min(1))


def word_coverage(p: Tensor, token_mask: Tensor) -> Tensor:
    """(B,): each real token's highest response over the clips, averaged over the tokens: how
    well every word of the sentence finds some clip of the video. It ranks the windows of a long
    video (fsan_cli/predict/windows.py; measured against S(V, S) in docs/method.md)."""
    tm = token_mask.to(p.dtype)
    return (p.amax(-1) * tm).sum(1) / tm.sum(1).clamp_min(1)


def segment_scores(p: Tensor, token_mask: Tensor) -> Tensor:
    """SC_{s,e} of eq. 8 for all segments at once: (B, Ns, Nv) -> (B, Nv, Nv).

    Mean of P over real tokens and clips inside, minus the mean over outside clips of each
    clip's weakest token response; 0 outside term for the whole video; NEG_INF where s > e.
    """
    nv = p.shape[-1]
    valid, length = segment_geometry(nv, p.device)
    inner = segment_inner_mean(p, token_mask)
    weakest = masked_token_min(p, token_mask)  # (B, Nv)
    outside = weakest.sum(-1)[:, None, None] - segment_sums(weakest)
    n_out = nv - length
    outer = torch.where(n_out > 0, outside / n_out.clamp_min(1), torch.zeros_like(outside))
    return (inner - outer).masked_fill(~valid, NEG_INF)


def segment_weights(sc: Tensor, mode: str, tau: float) -> Tensor:
    """Weights of eq. 10/12 over valid segments, (B, Nv, Nv), detached."""
    sc = sc.detach()
    valid = sc > NEG_INF / 2
    if mode == "softmax":
        return torch.softmax((sc / tau).flatten(1), -1).view_as(sc)
    if mode == "raw":
        return sc.masked_fill(~valid, 0.0)
    raise ValueError(f"unknown weights mode {mode!r}")


def segment_indicator(nv: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The Nv (Nv + 1) / 2 valid segments s <= e, row-major: (U (Nv, S) with U[j, k] = 1 when
    clip j lies in segment k, flat (S,) index of each into an (Nv, Nv) map, length (S,))."""
    s, e = torch.triu_indices(nv, nv, device=device)
    j = torch.arange(nv, device=device)[:, None]
    return ((j >= s) & (j <= e)).float(), s * nv + e, (e - s + 1).float()


def segment_table(nv: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened (s, e) of all Nv*Nv cells and whether s <= e."""
    s = torch.arange(nv).repeat_interleave(nv)
    e = torch.arange(nv).repeat(nv)
    return torch.stack([s, e], 1), s <= e


def top_k_segments(sc: torch.Tensor, k: int, nms: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Best k segments per sample after NMS: sc (B, Nv, Nv) -> (B, k, 2) clip ids, (B, k) scores.

    Greedy NMS vectorised over the batch (k rounds); a suppressed cell is only used when fewer
    than k segments survive, so every sample gets k distinct segments.
    """
    b, nv, _ = sc.shape
    cells, valid = segment_table(nv)
    cells, valid = cells.to(sc.device), valid.to(sc.device)
    flat = sc.reshape(b, -1).float().masked_fill(~valid, -math.inf)
    start, end = cells[:, 0].float(), cells[:, 1].float() + 1  # clip units, end exclusive
    k = min(k, int(valid.sum()))
    taken = torch.zeros_like(flat, dtype=torch.bool)
    suppressed = torch.zeros_like(taken)
    picks, scores = [], []
    for _ in range(k):
        free = flat.masked_fill(suppressed | taken, -math.inf)
        fallback = flat.masked_fill(taken, -math.inf)
        best = torch.where(free.amax(-1) > -math.inf, free.argmax(-1), fallback.argmax(-1))  # (B,)
        picks.append(best)
        scores.append(flat.gather(1, best[:, None])[:, 0])
        taken.scatter_(1, best[:, None], True)
        bs, be = start[best][:, None], end[best][:, None]
        inter = (torch.minimum(be, end) - torch.maximum(bs, start)).clamp_min(0)
        union = torch.maximum(be, end) - torch.minimum(bs, start)
        suppressed |= inter / union > nms
    idx = torch.stack(picks, 1)  # (B, k)
    return cells[idx], torch.stack(scores, 1)


def segments_to_seconds(segments: torch.Tensor, duration: torch.Tensor, nv: int) -> np.ndarray:
    """Clip j covers [j, j + 1) * duration / Nv: (Q, k, 2) clip ids -> (Q, k, 2) seconds."""
    seg = segments.double()
    sec = torch.stack([seg[..., 0], seg[..., 1] + 1], -1) * (duration[:, None, None] / nv)
    return sec.numpy()
