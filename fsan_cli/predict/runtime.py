"""How the Predictor runs on the hardware in hand: its precision, and on a CPU how many
batches run side by side and how freed memory is kept."""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

PRECISIONS = ("auto", "fp32", "bf16")
FEW = 4  # up to this many queries run on one CPU thread (see `cpu_workers`)


def fast_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 matrices natively: CUDA with bf16, or a CPU with AMX
    tiles (measured on one: 2 to 4 times the fp32 rate of the paper-config model)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool(amx and amx())
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" where the hardware has fast bf16, else "fp32"."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}")
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    return precision


@contextmanager
def cpu_workers(queries: int, device: torch.device) -> Iterator[int]:
    """How many batches to run at once, with the CPU's intra-op threads set for them.

    On a CPU the model's ops are too small to keep several threads busy on one batch (they
    wait for each other at every op), so each batch gets one thread and as many batches run
    side by side as there were threads: measured 20-30% more queries/s than one batch on two
    threads, for 500 paper-config queries on a 2-core machine; fp32 results are bit-identical.
    A few queries (up to FEW) run on one thread alone (0.1 s for one paper-config query,
    against 0.6 to 1.5 s on two threads of a busy machine). The thread count, and with it
    OMP_NUM_THREADS, caps the workers; with OMP_NUM_THREADS set, a few queries keep it too."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1 or (queries <= FEW and "OMP_NUM_THREADS" in os.environ):
        yield 1
        return
    torch.set_num_threads(1)  # intra-op threads of every thread, the workers' included
    try:
        yield 1 if queries <= FEW else min(threads, -(-queries // FEW))
    finally:
        torch.set_num_threads(threads)


def reuse_freed_memory() -> None:
    """Have glibc keep freed blocks of up to 256 MB for reuse. By default it hands large blocks
    back to the OS at once, so every batch's activations fault their pages in again: measured
    half of `fsan ground`'s page faults and system time for 500 paper-config queries. Only
    this process is affected, and only on glibc; elsewhere this does nothing."""

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD: larger blocks still come from mmap
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD: free memory kept at the heap's top
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        pass
