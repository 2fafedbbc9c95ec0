"""Issue 22's speed options for the training step, each a setting that is off by default until
a GPU measures it (benchmarks/tools/gpu_check.sh):

- train.bf16_weights: forward and backward run on a bf16 copy of the network; its gradients are
  copied into the fp32 master weights, which Adam steps, clipping reads and checkpoints save, and
  the copy is refreshed from them after each step. Autocast instead casts every weight at every
  use (on CUDA, the default): a third of an H200 step's memory-bound kernels are such casts.
- train.compile_losses: torch.compile on the segment scores (eq. 8) and the losses (eq. 6-13)
  alone, dozens of small reductions over (B, Ns, Nv) and (B, Nv, Nv) tensors, fused into a few
  kernels; the network's matrix products stay eager (or captured).
- train.static_graph: DDP built with static_graph=True, so that its step can be captured as a
  CUDA graph under torchrun (fsan_cli/train/cuda_graph.py).

`describe` is the line `fsan train` prints on stderr: which of these paths a run takes.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from fsan_cli.core.settings import TrainSettings
from fsan_cli.train.step import TrainingPass
from models.fsan import FSAN
from models.losses import fsan_losses, negative_token_mask
from models.segments import segment_scores


class MasterWeights:
    """fp32 master weights (the model Adam steps and checkpoints save) and their bf16 working
    copy (`work`, the model a TrainingPass runs).

    Each step: `grads_to_masters` after the backward (and DDP's all-reduce, which reduces the
    bf16 gradients), `copy_to_work` after the optimizer's step. Both launch work only, no host
    sync, so a CapturedStep records them. Micro-batch pieces accumulate their gradients in the
    bf16 copy before the transfer (as DDP reduces them in bf16)."""

    def __init__(self, model: FSAN) -> None:
        self.model = model
        self.work = copy.deepcopy(model).to(torch.bfloat16)
        self.work.train(model.training)
        pairs = [
            (m, w)
            for m, w in zip(model.parameters(), self.work.parameters(), strict=True)
            if m.requires_grad
        ]
        self.masters = [m for m, _ in pairs]
        self.copies = [w for _, w in pairs]

    def grads_to_masters(self) -> None:
        """Each master's .grad := its copy's gradient in fp32; the copies' gradients dropped."""
        for m, w in zip(self.masters, self.copies, strict=True):
            m.grad = None if w.grad is None else w.grad.float()
            w.grad = None

    @torch.no_grad()
    def copy_to_work(self) -> None:
        """The bf16 copy := the masters, rounded (after every optimizer step and a restore)."""
        torch._foreach_copy_(self.copies, self.masters)


class FastPass(TrainingPass):
    """TrainingPass with issue 22's options: inputs cast to the weights' dtype (bf16 weights,
    autocast off) and/or the losses through a compiled fsan_losses."""

    def __init__(self, model: FSAN, bf16: bool, dtype: torch.dtype | None, losses: Any) -> None:
        super().__init__(model, bf16)
        self.dtype, self.losses = dtype, losses

    def forward(self, video, pos_tok, neg_tok, neg_ok, neg_feats, sap_scale):
        if self.dtype is not None:  # bf16 weights take bf16 features (fp32 on a CPU)
            video = video.to(self.dtype)
            neg_feats = None if neg_feats is None else neg_feats.to(self.dtype)
        with torch.autocast(
            video.device.type,
            dtype=torch.bfloat16,
            enabled=self.bf16,
            cache_enabled=self.cast_cache,
        ):
            pos = self.model(video, pos_tok)
            neg_out = self.model(video, neg_tok, negative_token_mask(pos_tok, neg_tok))
            neg_video = self.model(neg_feats, pos_tok) if neg_feats is not None else None
        return self.losses(self.model, pos, neg_out, neg_ok, neg_video, sap_scale)


def compiled_losses() -> tuple[Any, Any]:
    """(fsan_losses, segment_scores) under torch.compile; recompiled once with dynamic shapes
    where the token count changes (on a CPU, batches are trimmed to their longest query)."""
    return torch.compile(fsan_losses), torch.compile(segment_scores)


def training_pass(
    model: FSAN, tc: TrainSettings, device: torch.device, masters: MasterWeights | None = None
) -> TrainingPass:
    """The pass `fsan train` runs (before DDP and --compile wrap it): the plain TrainingPass
    (autocast bf16 on CUDA, fp32 on a CPU) unless an issue-22 option is on. With `masters` the
    pass runs their bf16 copy."""
    autocast = device.type == "cuda" and masters is None
    if masters is None and not tc.compile_losses:
        return TrainingPass(model, autocast)
    net = masters.work if masters is not None else model
    losses = fsan_losses
    if tc.compile_losses:
        losses, scores = compiled_losses()
        net.compiled_scores = scores  # FSAN.forward uses it in training mode only
    return FastPass(net, autocast, torch.bfloat16 if masters is not None else None, losses)


def describe(
    tc: TrainSettings,
    device: torch.device,
    compile: bool,
    graphed: bool,
    world: int,
    static: bool = False,
) -> str:
    """One line for stderr: the step's path and its options, e.g. "Training step: captured as
    one CUDA graph after 3 eager steps (train.cuda_graph), bf16 autocast"."""
    if graphed:
        warm = 11 if world > 1 else 3
        path = f"captured as one CUDA graph after {warm} eager steps (train.cuda_graph)"
    elif compile:
        path = f"torch.compile, mode {tc.compile_mode} (--compile)"
    else:
        path = "eager"
    if tc.bf16_weights:
        precision = "bf16 weights with fp32 masters (train.bf16_weights)"
    else:
        precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    parts = [path, precision]
    if device.type == "cuda":
        parts.append("fused Adam")
    if tc.compile_losses:
        parts.append("compiled losses (train.compile_losses)")
    if world > 1:
        if static:
            parts.append(f"DDP over {world} processes, static graph (train.static_graph)")
        elif tc.static_graph:  # Dist.static_graph: not with micro-batch pieces
            parts.append(f"DDP over {world} processes, dynamic graph (train.micro_batch's pieces)")
        else:
            parts.append(f"DDP over {world} processes")
    return "Training step: " + ", ".join(parts)
