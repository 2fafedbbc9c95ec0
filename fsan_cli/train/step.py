"""One training step's arithmetic: the passes and losses of a batch (eq. 13), its backward in
pieces, and the optimizer with its learning-rate and SAP schedules."""

from __future__ import annotations

import contextlib
import math

import torch

from fsan_cli.core.settings import TrainSettings
from fsan_cli.train.resident import TrainingData
from models.fsan import FSAN
from models.losses import fsan_losses, negative_token_mask


class TrainingPass(torch.nn.Module):
    """One training forward, (V, S) and (V, S^-) (and (V^-, S)) plus the losses of eq. 13, as a
    module: DistributedDataParallel and torch.compile see one forward per backward."""

    def __init__(self, model: FSAN, bf16: bool) -> None:
        super().__init__()
        self.model, self.bf16 = model, bf16
        self.cast_cache = True  # autocast's weight casts kept per forward; off under CUDA graphs

    def forward(self, video, pos_tok, neg_tok, neg_ok, neg_feats, sap_scale):
        device_type = video.device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bf16,
                            cache_enabled=self.cast_cache):
            pos = self.model(video, pos_tok)
            neg_out = self.model(video, neg_tok, negative_token_mask(pos_tok, neg_tok))
            neg_video = self.model(neg_feats, pos_tok) if neg_feats is not None else None
        return fsan_losses(self.model, pos, neg_out, neg_ok, neg_video, sap_scale)


HASH = (1_103_515_245, 12_345, 10_007)  # composed's draws: (a * idx + b * neg) mod m


def composed(features: torch.Tensor, vids: torch.Tensor, idx: torch.Tensor, neg: torch.Tensor,
             share: float, normalize: bool) -> torch.Tensor:
    """(B, Nv, D) each sample's video; for about a `share` of them, laid beside another
    training video: each pooled to half the clips (adaptive average pooling, as `fsan prepare`
    pools rows) and joined in an order drawn too, so the sentence's moment lies in one part of
    a video of mixed content, as in a window of a long video (predict/windows.py). The other
    video is the next sample's negative caption's, never the sample's own nor its own
    negative's (whose sentence must stay absent). The draws hash the batch's rows: no new
    random numbers, so a run with share 0 is unchanged and a resumed run draws the same."""
    own, other = vids[idx], vids[neg.roll(1)]
    video = features[own].float()
    a, b, m = HASH
    h = (idx * a + neg * b) % m
    on = (h < share * m) & (other != own) & (other != vids[neg])
    nv = video.shape[1]
    pool = torch.nn.functional.adaptive_avg_pool1d
    first = pool(video.transpose(1, 2), nv // 2).transpose(1, 2)
    second = pool(features[other].float().transpose(1, 2), nv - nv // 2).transpose(1, 2)
    swap = (h % 2 == 1)[:, None, None]  # the other video first (either order has N_v clips)
    joined = torch.where(swap, torch.cat([second, first], 1), torch.cat([first, second], 1))
    if normalize:
        joined = torch.nn.functional.normalize(joined, dim=-1)
    return torch.where(on[:, None, None], joined, video)


def training_step(
    model, features, tokens, vids, idx, neg, device, autocast: bool | None = None,
    sap_scale: float | torch.Tensor = 1.0, runner: torch.nn.Module | None = None,
    compose: float = 0.0, normalize: bool = True,
):
    """Positive pass (V, S) and negative pass (V, S^-) of one batch, and the losses (eq. 13).

    idx, neg (B,): query rows of the batch and of its negative captions, drawn on the device;
    a negative that happens to describe the same video is left out of L^t. `runner` is the
    TrainingPass to call (wrapped by DDP or torch.compile); by default one around `model`.
    `compose` > 0: that share of the videos laid beside another (`composed`).
    """
    core = model.module if hasattr(model, "module") else model
    if runner is None:
        runner = TrainingPass(core, device.type == "cuda" if autocast is None else autocast)
    if compose > 0:
        video = composed(features, vids, idx, neg, compose, normalize)
    else:
        video = features[vids[idx]].float()  # (B, Nv, D)
    neg_feats = features[vids[neg]].float() if core.cfg.negative_video else None
    if not torch.is_tensor(sap_scale):
        sap_scale = torch.tensor(float(sap_scale), device=video.device)
    pos_tok, neg_tok = tokens[idx], tokens[neg]
    if video.device.type == "cpu":  # no fixed shapes to keep: drop columns that are all padding
        pos_tok, neg_tok = trim_padding(pos_tok), trim_padding(neg_tok)
    return runner(video, pos_tok, neg_tok, vids[neg] != vids[idx], neg_feats, sap_scale)


def trim_padding(tokens: torch.Tensor) -> torch.Tensor:
    """(B, Ns) zero-padded token ids cut to the batch's longest query. Exact: padded tokens are
    masked everywhere; the split pads to its longest query (ActivityNet: 32, mean 13)."""
    return tokens[:, : max(1, int((tokens != 0).sum(1).max()))]


def accumulate(
    runner: torch.nn.Module, model: FSAN, data: TrainingData, idx: torch.Tensor, neg: torch.Tensor,
    device: torch.device, sap_scale: float, scale: float, micro_batch: int, compose: float = 0.0,
) -> torch.Tensor:
    """Backward of the losses of rows `idx` (negatives `neg`), times `scale`, into the
    parameters' .grad; returns the detached (total, matching, inner, outer) losses.

    With micro_batch > 0 the rows go through in pieces of at most that many, each loss weighted
    by its piece's share of the rows, so the gradient is the whole batch's: activation memory
    scales with the piece, not the batch. (Eq. 6 averages L^t over samples whose negative comes
    from another video; a piece's average stands in for its share of that.) Under DDP the
    gradients are all-reduced once, on the last piece."""
    size = micro_batch if 0 < micro_batch < idx.numel() else idx.numel()
    pieces = list(zip(idx.split(size), neg.split(size), strict=True))
    no_sync = getattr(runner, "no_sync", None)  # DDP (also through torch.compile's wrapper)
    parts = torch.zeros(4, device=device)
    for i, (rows, negs) in enumerate(pieces):
        share = rows.numel() / idx.numel()
        quiet = no_sync() if no_sync is not None and i < len(pieces) - 1 else contextlib.nullcontext()
        with quiet:
            losses = training_step(model, data.features, data.tokens, data.vids, rows, negs, device,
                                   sap_scale=sap_scale, runner=runner, compose=compose,
                                   normalize=data.normalized)
            (losses.total * (scale * share)).backward()
        parts += torch.stack([losses.total, losses.matching, losses.inner, losses.outer]).detach() * share
    return parts


MAX_AUTO_EPOCHS = 100  # a tiny dataset (a user's handful of videos) is not passed over 2,000 times


def run_length(tc: TrainSettings, queries: int) -> tuple[int, int]:
    """(steps per epoch, epochs) of a run over `queries` train queries: train.epochs, or with
    train.epochs = 0 as many whole epochs as make train.steps optimizer steps (at least 2, so
    that val has two epochs to choose from, and at most MAX_AUTO_EPOCHS)."""
    steps_per_epoch = math.ceil(queries / tc.batch_size)
    epochs = tc.epochs or min(MAX_AUTO_EPOCHS, max(2, math.ceil(tc.steps / steps_per_epoch)))
    return steps_per_epoch, epochs


def lr_at(step: int, total: int, tc: TrainSettings) -> float:
    """Linear warm-up over `warmup` of the steps, then constant (the paper's plain Adam)."""
    warm = int(tc.warmup * total)
    if warm and step < warm:
        return tc.lr * (step + 1) / warm
    return tc.lr


def sap_schedule(step: int, total: int, tc: TrainSettings) -> float:
    """Weight of the SAP losses (eq. 9-12) at `step`: 0 for the first `sap_start` share of the
    steps, then a linear ramp over `sap_warmup` of the steps, then 1."""
    start = tc.sap_start * total
    ramp = tc.sap_warmup * total
    if step < start:
        return 0.0
    return min(1.0, (step - start) / ramp) if ramp > 0 else 1.0


def set_lr(opt: torch.optim.Optimizer, value: float) -> None:
    """Every group's learning rate; filled in place where it is a tensor (a captured step's)."""
    for g in opt.param_groups:
        if torch.is_tensor(g["lr"]):
            g["lr"].fill_(value)
        else:
            g["lr"] = value


def make_optimizer(model: FSAN, tc: TrainSettings, device: torch.device, captured: bool = False) -> torch.optim.Optimizer:
    """Adam (paper §4.2; AdamW when train.weight_decay > 0), fused on CUDA; for a captured
    step, capturable with its learning rate in a device tensor."""
    params = [p for p in model.parameters() if p.requires_grad]
    extra = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay,
                            capturable=captured, **extra)
    ready_optimizer(opt, device, captured)
    return opt


def ready_optimizer(opt: torch.optim.Optimizer, device: torch.device, captured: bool) -> None:
    """The groups as this run steps them, whatever a restored last.pt held (a run may resume on
    another device, or with train.cuda_graph changed): for a captured step, capturable, with
    each lr a device tensor (read at every replay) and Adam's step counts on the device; else
    each lr a float."""
    for g in opt.param_groups:
        value = float(g["lr"])
        g["lr"] = torch.tensor(value, device=device) if captured else value
        g["capturable"] = captured
    if captured:
        for st in opt.state.values():
            if torch.is_tensor(st.get("step")):
                st["step"] = st["step"].to(device=device, dtype=torch.float32)
