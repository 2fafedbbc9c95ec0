"""Several processes under `torchrun`: DistributedDataParallel with one shard of every global
batch per rank. One process (the default) makes every helper here a no-op.

Every rank draws the same permutation and negatives from the same seeded generator and takes a
contiguous share of each global batch (train.batch_size); the loss on each rank is weighted by
its share, so DDP's gradient average is the gradient of the global batch's mean loss. Only rank
0 validates, writes files and prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as td
from torch.nn.parallel import DistributedDataParallel

from fsan_cli.core.errors import FsanError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def check_batch(self, batch_size: int) -> None:
        if batch_size < self.world:
            raise FsanError(
                f"train.batch_size={batch_size} is smaller than the {self.world} processes",
                f"Pass --batch-size {self.world} or more (it is the global batch)",
            )

    def largest_share(self, batch_size: int) -> int:
        """The most rows `shard` gives one rank of a global batch of `batch_size`."""
        return -(-batch_size // self.world)

    def shard(self, idx: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """This rank's rows of the global batch and its share of the batch (its loss weight)."""
        if self.world == 1:
            return idx, neg, 1.0
        mine = idx.tensor_split(self.world)[self.rank]
        neg_mine = neg.tensor_split(self.world)[self.rank]
        if mine.numel() == 0:  # a last batch smaller than the world: take part with weight 0
            return idx[:1], neg[:1], 0.0
        return mine, neg_mine, mine.numel() / idx.numel()

    def static_graph(self, tc) -> bool:
        """Whether DDP is built with static_graph=True: train.static_graph under torchrun, with
        each rank's share of a batch in one piece (DDP's static graph does not take the
        no_sync of train.micro_batch's pieces: such a run steps with the dynamic one)."""
        pieces = 0 < tc.micro_batch < self.largest_share(tc.batch_size)
        return bool(tc.static_graph) and self.world > 1 and not pieces

    def wrap(self, module: torch.nn.Module, device: torch.device, mc, static_graph: bool = False,
             side_stream: bool = False) -> torch.nn.Module:
        """DDP around `module` (itself in one process). static_graph (train.static_graph): every
        step uses the same parameters in the same order, which DDP records on its first step
        (unused ones included); a captured step needs it. side_stream: built on a side CUDA
        stream, as capturing DDP's backward requires."""
        if self.world == 1:
            return module

        unused = mc.grounding == "mlp" or not mc.sap  # some parameters get no gradient
        ids = [device.index] if device.type == "cuda" else None
        extra = {"static_graph": True} if static_graph else {"find_unused_parameters": unused}
        if not (side_stream and device.type == "cuda"):
            return DistributedDataParallel(module, device_ids=ids, **extra)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            wrapped = DistributedDataParallel(module, device_ids=ids, **extra)
        torch.cuda.current_stream(device).wait_stream(side)
        return wrapped

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(x, "SUM")

    def all_min(self, x: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(x, "MIN")

    def _all_reduce(self, x: torch.Tensor, op: str) -> torch.Tensor:
        if self.world == 1:
            return x

        x = x.clone()
        td.all_reduce(x, op=getattr(td.ReduceOp, op))
        return x

    def gather(self, obj):
        """Every rank's `obj`, in rank order, on every rank (a list of one without torchrun)."""
        if self.world == 1:
            return [obj]

        out = [None] * self.world
        td.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            td.barrier()


def launched() -> bool:
    """True under torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun set up: NCCL on CUDA (cuda:LOCAL_RANK), gloo on CPU."""
    if not launched():
        return Dist(), device

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise FsanError(
                f"local rank {local} has no GPU ({torch.cuda.device_count()} here)",
                "Pass --nproc_per_node at most the number of GPUs",
            )
        device = torch.device(f"cuda:{local}")
        torch.cuda.set_device(device)
    if not td.is_initialized():
        td.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local), device


def shutdown() -> None:
    if launched() and td.is_initialized():
        td.destroy_process_group()
