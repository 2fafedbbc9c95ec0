"""How many samples fit in one forward/backward on a CPU, so that `fsan train` splits batches
(train.micro_batch) before the kernel's out-of-memory killer ends it without a word.

A CUDA out-of-memory error is an exception, which `fsan train` turns into advice; running out
of RAM usually is not: Linux kills the process. So on a CPU, with train.micro_batch = 0, the
training loop estimates the activation memory of a batch and, when the free RAM cannot hold it,
trains in pieces that fit (the gradient is the same: step.accumulate).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsan_cli.core.errors import FsanError
from fsan_cli.core.output import log
from fsan_cli.core.settings import Settings, TrainSettings
from models.config import FSANConfig

if TYPE_CHECKING:  # torch is imported where it is used: `fsan prepare` checks memory without it
    import torch  # `fsan prepare` checks memory without loading torch

# Floats kept for the backward pass per sample, fitted to what autograd saves (measured with
# torch.autograd.graph.saved_tensors_hooks over 10 small configs; within 1% of each, and within
# 3% at the paper config: 171 MB per sample with 32 tokens). tests/test_memory.py measures it
# again on configs the fit never saw.
PER_ROW_D = 44.3  # per ICIM layer, pass, row (clip or token) and hidden unit
PER_HEAD_PAIR = 3.6  # per ICIM layer, pass, head and (row, row) pair
PER_TEXT_ROW_D = 25.4  # per text-encoder layer, pass, token and hidden unit
PER_CLIP_D = 4.2  # per pass, clip and hidden unit (input projection)
PER_TOKEN_SEGMENT = 7.2  # per token and clip segment (the inner loss, positive pass only)
# A step's peak RAM over what autograd saves: the backward's transient gradients and the
# allocator's slack. Measured 1.45-1.5 at the paper config in pieces of 8 and 16 samples
# (`python -m benchmarks.speed.train_speed --micro-batch 16` prints the peak beside this estimate).
PEAK_OVER_SAVED = 1.5
USABLE = 0.8  # share of the free memory a step may take


def activation_bytes(mc: FSANConfig, tokens: int) -> int:
    """Bytes autograd keeps for one sample of a training step (fp32) with `tokens` tokens."""
    passes = 3 if mc.negative_video else 2
    rows = mc.clips + tokens
    floats = passes * (
        mc.layers * (PER_ROW_D * rows * mc.hidden + PER_HEAD_PAIR * mc.heads * rows**2)
        + mc.text_layers * PER_TEXT_ROW_D * tokens * mc.hidden
        + PER_CLIP_D * mc.clips * mc.hidden
    )
    floats += PER_TOKEN_SEGMENT * tokens * mc.clips * (mc.clips + 1) / 2
    return int(4 * floats)


def available_bytes(meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Free RAM for this process: MemAvailable, capped by a cgroup (container) limit. None where
    there is no /proc/meminfo (not Linux)."""
    try:
        info = meminfo.read_text()
    except OSError:
        return None
    free = next((int(line.split()[1]) * 1024 for line in info.splitlines()
                 if line.startswith("MemAvailable:")), None)  # fmt: skip
    if free is None:
        return None
    for limit, usage in (("memory.max", "memory.current"),  # cgroup v2
                         ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):  # v1
        try:
            cap, used = (cgroup / limit).read_text().strip(), (cgroup / usage).read_text().strip()
        except OSError:
            continue
        if cap.isdigit() and used.isdigit():  # v2 writes "max" when there is no limit
            free = min(free, max(0, int(cap) - int(used)))
        break
    return free


def check_fits(nbytes: int, what: str, fix: str) -> None:
    """Before reading `nbytes` into RAM: an error saying `what` needs them when they are more than
    the free RAM (available_bytes), rather than an allocation failure or the kernel's OOM killer."""
    free = available_bytes()
    if free is not None and nbytes > free:
        raise FsanError(f"{what}: {size_text(nbytes)} of RAM needed, {size_text(free)} free", fix)


def size_text(nbytes: int) -> str:
    return f"{nbytes / 2**30:,.1f} GB" if nbytes >= 2**30 else f"{nbytes / 2**20:,.1f} MB"


def step_bytes(per_sample: int, samples: int) -> int:
    """Peak RAM of a step's forward and backward over `samples` samples (PEAK_OVER_SAVED)."""
    return int(PEAK_OVER_SAVED * per_sample * samples)


def fitting_piece(share: int, per_sample: int, free: int, processes: int = 1) -> int:
    """The most samples (at most `share`, at least 1) whose step fits in USABLE of `free` bytes
    shared by `processes` processes on this machine."""
    budget = USABLE * free / max(1, processes)
    return max(1, min(share, int(budget // max(1, step_bytes(per_sample, 1)))))


def local_processes() -> int:
    """Training processes on this machine (torchrun's LOCAL_WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: CUDA's OutOfMemoryError, the CPU allocator's RuntimeError, MemoryError."""
    import torch  # `fsan prepare` checks memory without loading torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def memory_error(cfg: Settings, dist: Any, device: torch.device, step: int, saved_step: int | None,
                 out_dir: Path) -> FsanError:
    """What to do when a step does not fit: smaller pieces per forward/backward, same gradient."""
    tc = cfg.train
    share = dist.largest_share(tc.batch_size)
    piece = min(tc.micro_batch or share, share)
    half = max(1, piece // 2)
    what = (f"{'the GPU' if device.type == 'cuda' else 'RAM'} ran out at step {step + 1} with "
            f"{piece} samples per forward/backward on each process (train.batch_size="
            f"{tc.batch_size}, train.micro_batch={tc.micro_batch})")
    how = (f"each batch goes through in pieces of {half} samples, with the same gradient and less "
           "memory")
    if saved_step is None:
        return FsanError(what, f"Train again with --micro-batch {half}: {how}")
    return FsanError(f"{what}; {out_dir / 'last.pt'} (step {saved_step}) is kept",
                     f"Continue with: fsan train --resume {out_dir} --micro-batch {half} ({how})")


def piece_that_fits(tc: TrainSettings, mc: FSANConfig, tokens: int, model: torch.nn.Module,
                    dist: Any) -> int:
    """On a CPU: the most samples per forward/backward whose step fits in the free RAM when a
    whole batch share does not, else 0 (whole shares). Running out of RAM gets the process
    killed without a message."""
    free = available_bytes()
    if free is None:
        return 0
    share = dist.largest_share(tc.batch_size)
    per_sample = activation_bytes(mc, tokens)
    # Adam's two moments and the gradients come at the first step
    later = 3 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    piece = fitting_piece(share, per_sample, free - later, local_processes())
    if piece == share:
        return 0
    log(f"A batch share of {share} needs about {step_bytes(per_sample, share) / 2**30:.1f} "
        f"GB for its forward and backward and {free / 2**30:.1f} GB of RAM are free: training "
        f"in pieces of {piece} (train.micro_batch; the same gradient)")
    return piece
