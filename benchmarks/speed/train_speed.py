"""Training throughput of FSAN: samples/s of a full training step (positive and negative pass,
forward and backward, all losses, Adam), seconds per ActivityNet-size epoch (37,421 pairs) and
model FLOP utilisation where the device's peak is known.

    python -m benchmarks.speed.train_speed            # paper config: d 512, 6 layers, N_v 64
    python -m benchmarks.speed.train_speed --set model.hidden=128 --set model.layers=2 \
        --set model.heads=2 --set data.clips=32 --batch-size 64
    python -m benchmarks.speed.train_speed --device cuda --compile --json
    python -m benchmarks.speed.train_speed --device cuda --cuda-graph --profile   # train.cuda_graph
    python -m benchmarks.speed.train_speed --device cuda --cuda-graph --bf16-weights --compile-losses
    torchrun --nproc_per_node=2 -m benchmarks.speed.train_speed --device cuda --cuda-graph \
        --set train.static_graph=true --batch-size 256     # DDP: --batch-size is the global batch

Inputs are random with the paper's shapes: 500-d clip features, ~24 tokens, 300-d word vectors.
The result (and --json's line) carries a "record" of how it was made (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.record import record
from fsan_cli.core.device import resolve_device
from fsan_cli.core.memory import activation_bytes, step_bytes
from fsan_cli.core.settings import load_settings
from fsan_cli.train import distributed
from fsan_cli.train.loop import Run, TrainingData, capture_steps, step_body
from fsan_cli.train.step import make_optimizer
from fsan_cli.train.step_options import MasterWeights, training_pass
from models.fsan import FSAN
from models.losses import fsan_losses

ACTIVITYNET_PAIRS = 37_421
# dense bf16 peak of known GPUs (TFLOP/s), for model FLOP utilisation
PEAK_BF16 = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
# bf16 matrix-multiply rate measured on the GPU (TFLOP/s; DESIGN.md, "Speed anchors"): the
# issue's MFU target (45%) is against this
MEASURED_BF16 = {"H200": 790.0}


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated by tensors, or the process's peak resident set on a CPU (the
    model, Adam's state and the data included: compare with step_memory_estimate_gb plus about
    1.6 GB at the paper config)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # KiB on Linux


def profile_steps(step, sync, device: torch.device, steps: int = 3) -> dict:
    """Kernels launched and device busy time per step (torch.profiler), and on stderr the
    operators with the most device time. Host-bound when busy time is well under step time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync()
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        sync()
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=15), file=sys.stderr)
    return {
        "kernels_per_step": round(len(kernels) / steps),
        "gpu_busy_ms_per_step": round(sum(e.device_time for e in kernels) / 1e3 / steps, 2),
    }


@contextlib.contextmanager
def uncompiled(plain: torch.nn.Module):
    """The pass with train.compile_losses' compiled functions swapped for the eager ones (the
    FLOP counter counts eager operators)."""
    net, losses = plain.model, getattr(plain, "losses", None)
    scores = net.compiled_scores
    net.compiled_scores = None
    if losses is not None:
        plain.losses = fsan_losses
    try:
        yield
    finally:
        net.compiled_scores = scores
        if losses is not None:
            plain.losses = losses


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="setting override key=value")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--micro-batch", type=int, default=0,
                    help="split each batch into pieces of this many samples (train.micro_batch)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--exact-tokens", action="store_true",
                    help="every query exactly --tokens long (no padding), as the plain reference")
    ap.add_argument("--feature-dim", type=int, default=500)
    ap.add_argument("--word-dim", type=int, default=300)
    ap.add_argument("--steps", type=int, default=None,
                    help="steps per timed window (default: 20 on GPU, 5 on CPU)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="time windows of --steps until this much time has passed (default: 5 on "
                         "GPU, 20 on CPU); the median window is reported, with the slowest and fastest")
    ap.add_argument("--precision", choices=["bf16", "tf32", "fp32"], default=None)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune")
    ap.add_argument("--compile-layers", action="store_true",
                    help="torch.compile each ICIM layer and text block instead of the whole step: "
                         "one compilation serves every layer (a trial: fsan train has no such mode); "
                         "combines with --cuda-graph")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="capture the whole step as one CUDA graph (train.cuda_graph)")
    ap.add_argument("--bf16-weights", action="store_true",
                    help="bf16 weights with fp32 masters instead of autocast (train.bf16_weights)")
    ap.add_argument("--compile-losses", action="store_true",
                    help="torch.compile the losses and segment scores alone (train.compile_losses)")
    ap.add_argument("--name", default=None, help="a name for the row (--out)")
    ap.add_argument("--out", type=Path, default=None, help="also append the JSON row to this file")
    ap.add_argument("--profile", action="store_true",
                    help="also profile a few steps: kernels launched and GPU busy time per step, "
                         "and the costliest kernels (on stderr)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    sets = list(args.sets) + ([f"train.batch_size={args.batch_size}"] if args.batch_size else [])
    sets += ["train.bf16_weights=true"] * args.bf16_weights + ["train.compile_losses=true"] * args.compile_losses
    cfg = load_settings("activitynet", overrides=sets)
    dist, device = distributed.init(resolve_device(args.device, announce=False))  # torchrun: DDP
    try:
        result = measure(args, argv, cfg, device, dist)
    finally:
        distributed.shutdown()
    if not dist.main:
        return result
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps({"name": args.name, **result}) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>22}: {v}")
    return result


def measure(args, argv, cfg, device: torch.device, dist) -> dict:
    """The measurement, in this process (one rank of torchrun, or alone)."""
    if args.cuda_graph and device.type != "cuda":  # a dry run on a CPU (gpu_check.sh DRY=1)
        print("--cuda-graph ignored: capturing needs CUDA", file=sys.stderr)
        args.cuda_graph = False
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
        torch.backends.cudnn.allow_tf32 = precision != "fp32"
    torch.manual_seed(0)
    mc = cfg.model_config(args.word_dim, args.feature_dim)
    model = FSAN(mc, torch.randn(5000, args.word_dim)).to(device).train()
    b, nv = cfg.train.batch_size, mc.clips
    n_videos, n_queries = 4 * b, 8 * b
    features = torch.randn(n_videos, nv, args.feature_dim, device=device)
    if device.type == "cuda":
        features = features.to(torch.bfloat16)
    longest = min(mc.max_tokens, 2 * args.tokens - args.tokens // 2)  # lengths average ~args.tokens
    lengths = torch.randint(args.tokens // 2, longest + 1, (n_queries,), device=device)
    if args.exact_tokens:
        longest = args.tokens
        lengths = torch.full((n_queries,), args.tokens, device=device)
    tokens = torch.randint(2, 5000, (n_queries, longest), device=device)
    tokens = tokens.masked_fill(torch.arange(tokens.shape[1], device=device)[None] >= lengths[:, None], 0)
    vids = torch.randint(0, n_videos, (n_queries,), device=device)
    autocast = precision == "bf16" and device.type == "cuda"
    data = TrainingData(features, tokens, vids)
    if args.micro_batch:
        cfg = cfg.replace("train.micro_batch", args.micro_batch)
    opt = make_optimizer(model, cfg.train, device, captured=args.cuda_graph)
    masters = MasterWeights(model) if cfg.train.bf16_weights else None
    plain = training_pass(model, cfg.train, device, masters)  # what `fsan train` runs per step
    plain.bf16 = autocast and masters is None  # --precision tf32 / fp32: no autocast
    wrapped = dist.wrap(plain, device, mc, static_graph=dist.static_graph(cfg.train), side_stream=args.cuda_graph)
    runner = torch.compile(wrapped, mode=args.compile_mode) if args.compile else wrapped
    run = Run(model, runner, opt, None, data, cfg, None, None, device, dist, masters=masters)
    if args.cuda_graph:
        capture_steps(run)

    def step(eager: bool = False) -> None:  # what fsan train's one_step does, without the logs
        idx = torch.randint(0, n_queries, (b,), device=device)
        neg = torch.randint(0, n_queries, (b,), device=device)
        if run.captured is not None and not eager:
            run.captured(idx, neg, 1.0)
        else:
            step_body(run if not eager else eager_run, idx, neg, 1.0)

    eager_run = Run(model, wrapped, opt, None, data, cfg, None, None, device, dist, masters=masters)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    flops = None  # counted on an eager step: the same arithmetic as a compiled or captured one
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, uncompiled(plain):
            step(eager=True)
        flops = counter.get_total_flops() / dist.largest_share(b)  # this rank's rows
    except Exception:  # noqa: BLE001 - FLOP counting is best effort
        flops = None
    if args.compile_layers:  # after the FLOP count, which runs eagerly
        net = plain.model  # the bf16 copy under --bf16-weights
        for block in [*net.icim, *net.text_encoder]:
            block.compile()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_warm = time.perf_counter()
    for _ in range(3 if device.type == "cpu" else 10):  # warm-up (compilation, capture)
        step()
    sync()
    warmup_s = time.perf_counter() - t_warm
    peak_gb = peak_memory_gb(device)
    steps = args.steps or (20 if device.type == "cuda" else 5)
    budget = args.seconds if args.seconds is not None else (5.0 if device.type == "cuda" else 20.0)
    rates: list[float] = []  # samples/s of each window: a shared machine's load moves it by 10-20%
    spent = 0.0
    while not rates or more(spent < budget, dist, device):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        elapsed = time.perf_counter() - t0
        spent += elapsed
        rates.append(steps * b / elapsed)
    sps = statistics.median(rates)
    result = {
        "samples_per_s": round(sps, 2),
        "samples_per_s_range": [round(min(rates), 2), round(max(rates), 2)],
        "windows": len(rates),
        "processes": dist.world,  # torchrun: samples/s of all of them; per GPU below
        "samples_per_s_per_process": round(sps / dist.world, 2),
        "epoch_s_activitynet": round(ACTIVITYNET_PAIRS / sps, 2),
        "gflop_per_sample": round(flops / 1e9, 2) if flops else None,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "precision": precision,
        "compile": args.compile_mode if args.compile else False,
        "compile_layers": args.compile_layers,
        "cuda_graph": args.cuda_graph,
        "bf16_weights": cfg.train.bf16_weights,
        "compile_losses": cfg.train.compile_losses,
        "static_graph": dist.static_graph(cfg.train) if dist.world > 1 else None,
        "negative_video": mc.negative_video,  # the third pass (V^-, S)
        "warmup_s": round(warmup_s, 1),
        "batch_size": b,
        "micro_batch": args.micro_batch,
        "peak_memory_gb": peak_gb,
        # fsan_cli/core/memory.py's fp32 estimate: what `fsan train` splits CPU batches by
        "step_memory_estimate_gb": round(
            step_bytes(activation_bytes(mc, longest), args.micro_batch or b) / 2**30, 2)
        if device.type == "cpu" else None,
        "clips": nv,
        "hidden": mc.hidden,
        "layers": mc.layers,
    }
    if flops and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, table in (("mfu_percent", PEAK_BF16), ("mfu_measured_percent", MEASURED_BF16)):
            peak = next((v for k, v in table.items() if k in name), None)
            if peak:  # per GPU
                result[key] = round(100 * flops * sps / dist.world / (peak * 1e12), 1)
    if args.profile:
        result.update(profile_steps(step, sync, device))
    result["record"] = record(__spec__.name, argv)
    return result


def more(wanted: bool, dist, device: torch.device) -> bool:
    """Whether to time another window: under torchrun, only while every rank wants one (the
    ranks step together)."""
    if dist.world == 1:
        return wanted
    return bool(dist.all_min(torch.tensor(int(wanted), device=device)).item())


if __name__ == "__main__":
    sys.exit(main() and 0)
