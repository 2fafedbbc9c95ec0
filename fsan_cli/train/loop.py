"""`fsan train`'s loop: the whole split lives in memory (on the GPU when training there),
batches are gathered by index, negatives are drawn on the device, the best epoch is chosen on
val with the same Predictor that `fsan evaluate` uses, and checkpoints are atomic."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsan_cli.core import checkpoint
from fsan_cli.core.atomic import atomic_write_text
from fsan_cli.core.errors import FsanError
from fsan_cli.core.memory import memory_error, out_of_memory, piece_that_fits
from fsan_cli.core.output import log, training_progress
from fsan_cli.core.settings import Settings
from fsan_cli.data.store import Store, video_rows
from fsan_cli.evaluate.metrics import top1_iou
from fsan_cli.predict import windows
from fsan_cli.predict.predictor import Predictor
from fsan_cli.train import span_prior_fit
from fsan_cli.train.cuda_graph import CapturedStep, use_cuda_graph
from fsan_cli.train.distributed import Dist
from fsan_cli.train.matching import validate_matching
from fsan_cli.train.resident import TrainingData, training_data
from fsan_cli.train.resume import LoopState, restore_run, save_last
from fsan_cli.train.runs import remove_run_files, start_run_folder, write_failure
from fsan_cli.train.step import (
    accumulate,
    lr_at,
    make_optimizer,
    ready_optimizer,
    run_length,
    sap_schedule,
    set_lr,
)
from fsan_cli.train.step_options import MasterWeights, describe, training_pass
from models.fsan import FSAN
from models.segments import segments_to_seconds


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM turned into it) during training; the last checkpoint is intact."""

    def __init__(self, out_dir: Path, step: int, saved_step: int | None) -> None:
        super().__init__(f"interrupted at step {step}")
        self.out_dir, self.step, self.saved_step = out_dir, step, saved_step


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


@dataclass
class Run:
    """What the training loop works with, gathered once."""

    model: FSAN
    runner: torch.nn.Module  # the TrainingPass, maybe wrapped by DDP and torch.compile
    opt: torch.optim.Optimizer
    gen: torch.Generator  # permutations and negatives: the same draws on every rank
    data: TrainingData
    cfg: Settings
    store: Store
    out_dir: Path
    device: torch.device
    dist: Any  # fsan_cli.train.distributed.Dist
    captured: CapturedStep | None = None  # train.cuda_graph
    promote: Any = None  # called after the first last.pt: the run's folder from then on (runs.RunFolder)
    masters: MasterWeights | None = None  # train.bf16_weights: runner runs their bf16 copy


def capture_steps(run: Run) -> None:
    """From now on `one_step` goes through a CapturedStep of `step_body` (run.runner must be
    a TrainingPass, not compiled; under torchrun wrapped by DDP with train.static_graph, which
    needs 11 eager steps before the capture)."""
    plain = getattr(run.runner, "module", run.runner)
    plain.cast_cache = False  # autocast's cache and graph capture do not mix
    run.captured = CapturedStep(partial(step_body, run), warmup=11 if run.dist.world > 1 else 3)


def train(
    cfg: Settings,
    store: Store,
    out_dir: Path,
    device: torch.device,
    progress: bool = True,
    resume: bool = False,
    compile: bool = False,
    dist: Any = None,
    checkpoint_every: int | None = None,
    promote: Any = None,
) -> dict[str, Any]:
    """Train on store's train split, select on val each epoch, write the run folder.

    resume: continue from out_dir/last.pt (on CPU, bit for bit the uninterrupted run).
    compile: torch.compile the training pass. dist: a fsan_cli.train.distributed.Dist (one process
    when None); only its rank 0 validates, writes files and shows progress.
    checkpoint_every: save last.pt every N steps too (default: train.checkpoint_every, or 0).
    promote: called once the first last.pt is saved, returns the folder to write to from then on
    (a run built beside the one it replaces moves into its place: runs.RunFolder).
    """

    dist = dist or Dist()
    tc = cfg.train
    set_seed(tc.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        if progress:
            log(f"Training on {torch.get_num_threads()} CPU thread(s)")
    mc = cfg.model_config(int(store.vectors.shape[1]), store.feature_dim)
    dist.check_batch(tc.batch_size)
    data = training_data(mc, store, device)
    model = FSAN(mc, torch.from_numpy(store.vectors)).to(device)
    cpu_auto = device.type == "cpu" and not tc.micro_batch
    piece = piece_that_fits(tc, mc, int(data.tokens.shape[1]), model, dist) if cpu_auto else 0
    if piece:  # recorded in the run's settings; the caller's stay as they were
        cfg = cfg.replace("train.micro_batch", piece)
        tc = cfg.train
    graphed = use_cuda_graph(tc, device, compile, dist)
    opt = make_optimizer(model, tc, device, graphed)
    gen = torch.Generator(device=device).manual_seed(tc.seed)
    out_dir = Path(out_dir)
    state = LoopState()
    if resume:  # never starts afresh over the run (runs.check_last checked last.pt first)
        state = restore_run(out_dir / "last.pt", model, opt, gen, cfg, store, device, dist)
        ready_optimizer(opt, device, graphed)
    elif dist.main:
        start_run_folder(out_dir, cfg, store)
    if dist.world > 1 and state.step == 0:
        torch.manual_seed(tc.seed + dist.rank)  # dropout masks differ between ranks
    masters = MasterWeights(model) if tc.bf16_weights else None  # after a restore: its weights
    runner = dist.wrap(training_pass(model, tc, device, masters), device, mc,
                       static_graph=dist.static_graph(tc), side_stream=graphed)
    if compile:
        runner = torch.compile(runner, mode=tc.compile_mode)
    run = Run(model, runner, opt, gen, data, cfg, store, out_dir, device, dist,
              promote=promote if dist.main else None, masters=masters)
    if graphed:
        capture_steps(run)
    if progress and dist.main:
        log(describe(tc, device, compile, graphed, dist.world, dist.static_graph(tc)))
    if checkpoint_every is None:
        checkpoint_every = int(tc.checkpoint_every)
    try:
        run_epochs(run, state, progress, checkpoint_every)
        if dist.main:
            fit_span_prior(run, progress)
    except BaseException as exc:
        if dist.main and state.saved_step is None and not resume:
            remove_run_files(run.out_dir)  # nothing worth keeping: leave no half run behind
        if isinstance(exc, KeyboardInterrupt):
            raise TrainingInterrupted(run.out_dir, state.step, state.saved_step) from None
        if out_of_memory(exc):
            raise memory_error(cfg, dist, device, state.step, state.saved_step, run.out_dir) from None
        if (error := write_failure(exc, run.out_dir, state.saved_step)) is not None:
            raise error from None
        raise
    dist.barrier()
    return {"best_epoch": state.best["epoch"], "best_val_miou": state.best["score"],
            "out": str(run.out_dir), "steps": state.step}


def fit_span_prior(run: Run, progress: bool) -> None:
    """eval.span_prior: learn the span prior on train, choose its weight on val with best.pt's
    model, and store both in best.pt (fsan_cli/predict/span_prior.py); said on stderr."""

    if not run.cfg.eval.span_prior or not (run.out_dir / "best.pt").is_file():
        return
    prior = span_prior_fit.fit_checkpoint(run.out_dir / "best.pt", run.store, run.device)
    if not progress:
        return
    if prior is None:
        annotated = any(q.times for q in run.store.splits.get("val") or [])
        why = ("it is never used for DiDeMo" if run.store.manifest.get("dataset") == "didemo" else
               "its weight is chosen on val times, and this data has none" if not annotated else
               "the train split has no times to learn it from")
        log(f"Span prior: not used ({why})")
        return
    own, best = prior.choices[0][1], dict(prior.choices)[prior.weight]
    if prior.weight > 0:
        log(f"Span prior: weight {prior.weight:g} chosen on val (mean of val R@1 and mIoU {own:.2f} -> "
            f"{best:.2f}); stored in best.pt")
    else:
        log(f"Span prior: no weight helped on val (mean of val R@1 and mIoU {own:.2f}); answers are the model's own")


def run_epochs(run: Run, state: LoopState, progress: bool, every: int) -> None:
    """The epoch loop from wherever `state` stands; saves last.pt at each epoch end and every
    train.checkpoint_every steps, best.pt when val improves."""

    tc = run.cfg.train
    n, bs = run.data.tokens.shape[0], tc.batch_size
    steps_per_epoch, epochs = run_length(tc, n)
    total = steps_per_epoch * epochs
    if progress and run.dist.main and not tc.epochs and state.step == 0:
        log(f"Training {epochs} epochs of {steps_per_epoch} steps ({total} steps: train.steps={tc.steps}, "
            f"size {tc.size})")
    watch = FiniteWatch(run)
    sentences = sentence_vectors(run) if tc.hard_negatives > 1 else None
    with training_progress(total, enabled=progress and run.dist.main) as bar:
        while state.epoch <= epochs:
            run.model.train()
            if state.pos == 0:
                state.perm = torch.randperm(n, device=run.device, generator=run.gen)
                state.sums, state.seen, state.elapsed = torch.zeros(4, device=run.device), 0, 0.0
            t0 = time.perf_counter()
            while state.pos < n:
                idx = state.perm[state.pos : state.pos + bs]
                neg = draw_negatives(run, idx, sentences)
                total_loss = one_step(run, state, idx, neg, total)
                state.pos += idx.numel()
                state.step += 1
                state.seen += idx.numel()
                watch.add(state, idx, total_loss)
                if state.step % 10 == 0 or state.pos >= n:
                    watch.check(state)
                    rate = state.seen / (state.elapsed + time.perf_counter() - t0)
                    loss = state.sums[0].item() / math.ceil(state.pos / bs)
                    bar.update(state.step, epoch=state.epoch, loss=loss, rate=rate)
                if every and state.step % every == 0 and state.pos < n:
                    watch.check(state)
                    state.elapsed += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    checkpoint_last(run, state)
            state.elapsed += time.perf_counter() - t0
            bar.epoch_done(end_epoch(run, state, steps_per_epoch))


def sentence_vectors(run: Run) -> torch.Tensor:
    """(Q, word_dim) each train caption's mean word vector, unit length (the frozen embedding)."""
    tokens = run.data.tokens
    real = (tokens != 0).float()
    summed = (run.model.embedding.weight.detach().float()[tokens] * real[..., None]).sum(1)
    return torch.nn.functional.normalize(summed / real.sum(1, keepdim=True).clamp_min(1), dim=-1)


def draw_negatives(run: Run, idx: torch.Tensor, sentences: torch.Tensor | None) -> torch.Tensor:
    """(B,) each sample's negative caption row: one drawn at random (the paper), or with
    train.hard_negatives = m > 1, of m drawn the one nearest its sentence from another video
    (all m of its own video: the first, which L^t then leaves out)."""
    n = run.data.tokens.shape[0]
    if sentences is None:  # train.hard_negatives <= 1 (run_epochs computes them only above)
        return torch.randint(0, n, idx.shape, device=run.device, generator=run.gen)
    drawn = torch.randint(0, n, (idx.numel(), run.cfg.train.hard_negatives), device=run.device, generator=run.gen)
    near = (sentences[idx][:, None, :] * sentences[drawn]).sum(-1)
    near = near.masked_fill(run.data.vids[drawn] == run.data.vids[idx][:, None], -torch.inf)
    return drawn.gather(1, near.argmax(1, keepdim=True))[:, 0]


def one_step(run: Run, state: LoopState, idx: torch.Tensor, neg: torch.Tensor, total: int) -> torch.Tensor:
    """One optimizer step on this rank's share of the global batch `idx`; returns the loss."""
    tc = run.cfg.train
    set_lr(run.opt, lr_at(state.step, total, tc))
    sap_scale = sap_schedule(state.step, total, tc)
    parts = (run.captured or partial(step_body, run))(idx, neg, sap_scale)
    state.sums += parts
    return parts[0]


def step_body(run: Run, idx: torch.Tensor, neg: torch.Tensor, sap_scale: float | torch.Tensor) -> torch.Tensor:
    """Gradients of this rank's share of the batch, clipping and the optimizer's step; the
    detached (total, matching, inner, outer) losses times the share. Launches work only (no
    host sync), so CapturedStep can record it."""
    tc = run.cfg.train
    mine, neg_mine, weight = run.dist.shard(idx, neg)
    run.opt.zero_grad(set_to_none=True)
    # DDP averages gradients over ranks; weighted so they are the global batch's mean
    parts = accumulate(run.runner, run.model, run.data, mine, neg_mine, run.device, sap_scale,
                       weight * run.dist.world, int(tc.micro_batch), compose=float(tc.compose))
    if run.masters is not None:
        run.masters.grads_to_masters()
    if tc.grad_clip > 0:
        params = [p for p in run.model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
    run.opt.step()
    if run.masters is not None:
        run.masters.copy_to_work()
    return parts * weight


class FiniteWatch:
    """Notices a non-finite loss without a device sync per step: keeps the recent steps'
    batches and flags, and looks at them every few steps and before every save."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.recent: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []

    def add(self, state: LoopState, idx: torch.Tensor, total: torch.Tensor) -> None:
        self.recent.append((state.step, state.epoch, idx, torch.isfinite(total)))

    def check(self, state: LoopState) -> None:
        if not self.recent:
            return
        flags = self.run.dist.all_min(torch.stack([f for *_, f in self.recent]).int())
        recent, self.recent = self.recent, []
        bad = (flags == 0).nonzero()
        if len(bad):
            step, epoch, idx, _ = recent[int(bad[0, 0])]
            raise self.error(step, epoch, idx, state)

    def error(self, step: int, epoch: int, idx: torch.Tensor, state: LoopState) -> FsanError:
        videos = self.run.store.videos
        names = list(dict.fromkeys(videos[r]["video"] for r in self.run.data.vids[idx].tolist()))
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        last = self.run.out_dir / "last.pt"
        kept = (f"the last good checkpoint, {last} (step {state.saved_step}), is kept"
                if state.saved_step is not None else "no checkpoint had been saved yet")
        return FsanError(
            f"the loss became non-finite at step {step} (epoch {epoch}; videos in the batch: "
            f"{shown}); {kept}",
            "Lower train.lr or set train.grad_clip, then train again",
        )


def end_epoch(run: Run, state: LoopState, steps_per_epoch: int) -> dict[str, Any]:
    """Log the epoch, validate and save best.pt (rank 0), save last.pt; returns the record."""
    sums = (run.dist.all_sum(state.sums) / steps_per_epoch).tolist()
    record: dict[str, Any] = {"epoch": state.epoch, "step": state.step, "loss": sums[0]}
    record.update(zip(("loss_matching", "loss_inner", "loss_outer"), sums[1:], strict=True))
    record["samples_per_s"] = state.seen / max(state.elapsed, 1e-9)
    if run.dist.main:
        if run.data.val_queries:
            record.update(validate(run))
            score = record["val_miou"]
        elif run.data.match_queries:  # val without times: by matching (train/matching.py)
            record.update(validate_matching(val_predictor(run), run.data.features, run.store,
                                            run.data.match_queries))
            score = record["val_match"]
        else:  # no val split: the last epoch (the loss is no guide: the SAP terms join late)
            score = float(state.epoch)
        record["best"] = score > state.best["score"]
        if record["best"]:
            state.best = {"score": score, "epoch": state.epoch}
            payload = checkpoint.payload(run.model, run.cfg, run.store, {"epoch": state.epoch, "val": record})
            checkpoint.save(payload, run.out_dir / "best.pt")
        state.log.append(record)
        text = "".join(json.dumps(r) + "\n" for r in state.log)
        atomic_write_text(run.out_dir / "metrics.jsonl", text)
    state.epoch, state.pos, state.perm = state.epoch + 1, 0, None
    checkpoint_last(run, state)
    return record


def checkpoint_last(run: Run, state: LoopState) -> None:
    """Save last.pt; after the first, a run built beside the one it replaces takes its place."""
    save_last(run, state)
    if run.promote is not None:
        run.out_dir, run.promote = run.promote(), None


def val_predictor(run: Run) -> Predictor:
    """The model being trained, answering as `fsan evaluate` will with its checkpoint."""
    store = run.store
    data = {"clips": run.model.cfg.clips, "feature_dim": store.feature_dim, "dataset": store.manifest.get("dataset"),
            "durations": checkpoint.durations_of(store)}
    return Predictor(run.model, store.vocab, data, run.cfg.eval.nms, run.device, words=run.data.words,
                     tokenizer=checkpoint.tokenizer_of_store(store))


def validate(run: Run) -> dict[str, float]:
    """Top-1 mIoU and R@1 at IoU 0.3/0.5 on the validation split (selection uses val only),
    predicted by the same Predictor as `fsan evaluate`: val videos longer than every train video
    are read in windows where the store keeps their rows (predict/windows.py), as there."""
    store, queries, nv = run.store, run.data.val_queries, run.model.cfg.clips
    predictor = val_predictor(run)
    if windows.long_in_store(windows.Windowing.of(predictor.data), store, queries)[1]:
        answers = windows.answer_split(predictor, store, queries, 1)
        sec, top = answers.seconds[:, 0], answers.predictions.segments[:, 0]
    else:
        ids = predictor.encode([q.query for q in queries])
        out = predictor.predict(run.data.features, video_rows(store, queries), ids, 1)
        durations = torch.tensor([q.duration for q in queries], dtype=torch.float64)
        sec = segments_to_seconds(torch.from_numpy(out.segments), durations, nv)[:, 0]
        top = out.segments[:, 0]
    ious = top1_iou(sec, [q.times for q in queries])
    return {
        "val_miou": float(100 * ious.clip(0).mean()),
        "val_r1_iou0.3": float(100 * (ious >= 0.3).mean()),
        "val_r1_iou0.5": float(100 * (ious >= 0.5).mean()),
        "val_whole_video": float(100 * ((top[:, 0] == 0) & (top[:, 1] == nv - 1)).mean()),
        "val_distinct": int(np.unique(top, axis=0).shape[0]),
    }
