"""train.cuda_graph: the whole optimizer step captured as one CUDA graph and replayed."""

from __future__ import annotations

from typing import Any

import torch

from fsan_cli.core.settings import TrainSettings


class CapturedStep:
    """One optimizer step captured as a CUDA graph, then replayed (train.cuda_graph).

    At batch 128 an eager step is bound by the host: it launches thousands of small kernels
    (three passes of 6 layers, their backward, the losses, Adam), each a few microseconds of
    Python and dispatch. A replay launches the whole step at once. `fn(idx, neg, sap_scale)`
    is the step; it returns a tensor (the detached losses) and must keep to fixed shapes and
    read its changing inputs from tensors (the optimizer's lr is a tensor: set_lr fills it).

    The first `warmup` calls run eagerly on a side stream (real steps; they also create Adam's
    state and the libraries' workspaces), the next is captured and replayed. A call with
    another batch size (an epoch's smaller last batch) runs eagerly on the same parameters and
    optimizer state."""

    def __init__(self, fn, warmup: int = 3) -> None:
        self.fn, self.warmup, self.calls = fn, warmup, 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.out: torch.Tensor | None = None

    def __call__(self, idx: torch.Tensor, neg: torch.Tensor, sap_scale: float) -> torch.Tensor:
        self.calls += 1
        if self.graph is None and self.calls > self.warmup:
            self.capture(idx, neg, sap_scale)
        if self.inputs is not None and idx.shape == self.inputs[0].shape:
            s_idx, s_neg, s_sap = self.inputs
            s_idx.copy_(idx)
            s_neg.copy_(neg)
            s_sap.fill_(sap_scale)
            self.graph.replay()
            return self.out.clone()
        sap = torch.tensor(float(sap_scale), device=idx.device)
        if self.graph is not None:  # another batch size: eagerly, on the current stream
            return self.fn(idx, neg, sap)
        side = torch.cuda.Stream(idx.device)
        side.wait_stream(torch.cuda.current_stream(idx.device))
        with torch.cuda.stream(side):
            out = self.fn(idx, neg, sap)
        torch.cuda.current_stream(idx.device).wait_stream(side)
        return out

    def capture(self, idx: torch.Tensor, neg: torch.Tensor, sap_scale: float) -> None:
        self.inputs = (idx.clone(), neg.clone(), torch.tensor(float(sap_scale), device=idx.device))
        torch.cuda.synchronize(idx.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.out = self.fn(*self.inputs)
        self.graph = graph


def use_cuda_graph(tc: TrainSettings, device: torch.device, compile: bool, dist: Any) -> bool:
    """Whether to capture the step (train.cuda_graph, on by default): on CUDA, without --compile
    (whose reduce-overhead mode captures graphs of its own), in one process or under torchrun
    with train.static_graph (DDP's all-reduce captured with the step; NCCL 2.9.6 or later)."""
    alone = dist.world == 1 or dist.static_graph(tc)
    return bool(tc.cuda_graph) and device.type == "cuda" and not compile and alone
