"""Training and prediction: the whole split lives in memory (on the GPU when training there),
batches are gathered by index, negatives are sampled on the device, checkpoints are atomic."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsan_cli.atomic import atomic_write, atomic_write_text
from fsan_cli.config import Config, to_toml
from fsan_cli.data.store import Query, Store
from fsan_cli.errors import FsanError
from fsan_cli.output import log
from fsan_cli.text import PAD, encode, tokenize
from models.fsan import FSAN, FSANConfig, fsan_losses, negative_token_mask

CHECKPOINT_FORMAT = "fsan-checkpoint"
CHECKPOINT_VERSION = 1


def model_config(cfg: Config, word_dim: int, feature_dim: int) -> FSANConfig:
    """FSANConfig from resolved settings (sections model, align, loss, data)."""
    m, a, lo = cfg["model"], cfg["align"], cfg["loss"]
    return FSANConfig(
        word_dim=word_dim,
        feature_dim=feature_dim,
        clips=cfg["data"]["clips"],
        hidden=m["hidden"],
        layers=m["layers"],
        heads=m["heads"],
        dropout=m["dropout"],
        text_layers=m["text_layers"],
        align_dim=m["align_dim"],
        max_tokens=m["max_tokens"],
        cross_attention=m["cross_attention"],
        inner_attention=m["inner_attention"],
        grounding=m["grounding"],
        sc_map=a["sc_map"],
        weights=a["weights"],
        tau=a["tau"],
        inner_form=a["inner_form"],
        outer=a["outer"],
        margin=lo["margin"],
        match_tau=a["match_tau"],
        match_score=a.get("match_score", "sc"),
        negative_video=lo["negative_video"],
        w_matching=lo["matching"],
        w_inner=lo["inner"],
        w_outer=lo["outer"],
        sap_losses=lo["sap"],
    )


def check_model_config(mc: FSANConfig) -> None:
    if mc.hidden % mc.heads:
        raise FsanError(
            f"model.hidden={mc.hidden} is not divisible by model.heads={mc.heads}",
            "Choose values so hidden / heads is a whole number",
        )
    choices = {
        "sc_map": ("p", "p_hat", "centered"),
        "weights": ("softmax", "raw"),
        "inner_form": ("sigmoid_sum", "log_mean"),
        "outer": ("lower", "literal"),
        "grounding": ("alignment", "mlp"),
    }
    for key, allowed in choices.items():
        if getattr(mc, key) not in allowed:
            raise FsanError(f"setting {key}={getattr(mc, key)!r} is not allowed", f"Use one of {allowed}")


# ----------------------------------------------------------------------------- data on device


@dataclass
class SplitTensors:
    """One split as tensors: queries index into the store's videos."""

    tokens: torch.Tensor  # (Q, Ns) long, 0 = padding
    video: torch.Tensor  # (Q,) long, row of `features`
    duration: torch.Tensor  # (Q,) float64 seconds (CPU)


def encode_queries(queries: list[Query], vocab: list[str], max_tokens: int) -> torch.Tensor:
    word_to_id = {w: i for i, w in enumerate(vocab)}
    ids = [encode(q.query, word_to_id, max_tokens) or [word_to_id.get(PAD, 0)] for q in queries]
    n = max((len(x) for x in ids), default=1)
    out = np.zeros((len(ids), max(n, 1)), np.int64)
    for i, x in enumerate(ids):
        out[i, : len(x)] = x
    return torch.from_numpy(out)


def split_tensors(store: Store, queries: list[Query], vocab: list[str], max_tokens: int) -> SplitTensors:
    index = store.video_index
    missing = [q.video for q in queries if q.video not in index]
    if missing:
        raise FsanError(
            f"{len(missing)} queries name videos missing from the store (first: {missing[0]})",
            "Run `fsan prepare` again",
        )
    bad = [i for i, q in enumerate(queries) if not (math.isfinite(q.duration) and q.duration > 0)]
    if bad:
        q = queries[bad[0]]
        raise FsanError(
            f"{len(bad)} queries have a duration that is not a positive number of seconds "
            f"(first: video {q.video}, duration {q.duration})",
            "Fix the annotations and run `fsan prepare` again",
        )
    return SplitTensors(
        encode_queries(queries, vocab, max_tokens),
        torch.tensor([index[q.video] for q in queries], dtype=torch.long),
        torch.tensor([q.duration for q in queries], dtype=torch.float64),
    )


# ----------------------------------------------------------------------------- inference


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


@torch.no_grad()
def predict_segments(
    model: FSAN,
    features: torch.Tensor,
    data: SplitTensors,
    k: int,
    nms: float,
    batch_size: int = 256,
    return_maps: bool = False,
) -> dict[str, Any]:
    """Top-k segments (clip ids) and scores for every query, batched; optional alignment maps.
    Features are cast to the model's dtype (fp32, or bf16 for a model cast to it)."""
    model.eval()
    device = features.device
    dtype = next(model.parameters()).dtype
    segs, scores, maps, scs = [], [], [], []
    for i in range(0, data.tokens.shape[0], batch_size):
        tok = data.tokens[i : i + batch_size].to(device)
        out = model(features[data.video[i : i + batch_size].to(device)].to(dtype), tok)
        seg, score = top_k_segments(out.segment_scores, k, nms)
        segs.append(seg.cpu())
        scores.append(score.cpu())
        if return_maps:
            maps.append(out.alignment_map.cpu())
            scs.append(out.segment_scores.cpu())
    result = {"segments": torch.cat(segs), "scores": torch.cat(scores)}
    if return_maps:
        result["maps"], result["segment_scores"] = maps, scs
    return result


def segments_to_seconds(segments: torch.Tensor, duration: torch.Tensor, nv: int) -> np.ndarray:
    """Clip j covers [j, j + 1) * duration / Nv: (Q, k, 2) clip ids -> (Q, k, 2) seconds."""
    seg = segments.double()
    sec = torch.stack([seg[..., 0], seg[..., 1] + 1], -1) * (duration[:, None, None] / nv)
    return sec.numpy()


def top1_iou(pred: np.ndarray, gt: list[list[list[float]]]) -> np.ndarray:
    """IoU of each query's top-1 moment (Q, 2) with its best-matching ground-truth moment."""
    from fsan_cli.metrics import iou, pad_ragged

    gts, valid = pad_ragged(gt)  # (Q, M, 2), (Q, M)
    return np.where(valid, iou(pred[:, None, :], gts), -1.0).max(1)


# ----------------------------------------------------------------------------- checkpoints


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file, fsync and rename: a crash never leaves a half file."""
    atomic_write(path, lambda fh: torch.save(obj, fh), binary=True)


def checkpoint_payload(model: FSAN, cfg: Config, store: Store, vocab: list[str], extra: dict) -> dict:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": model.cfg.to_dict(),
        "settings": cfg,
        "vocab": vocab,
        "state_dict": state,
        "data": {
            "dataset": store.manifest.get("dataset"),
            "clips": store.clips,
            "feature_dim": store.feature_dim,
            "normalize": store.manifest.get("normalize", True),
            "pca": store.pca,
        },
        **extra,
    }


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[FSAN, dict]:
    """Rebuild the model from the checkpoint alone (config, vocabulary, vectors, weights)."""
    path = Path(path)
    if not path.is_file():
        raise FsanError(f"checkpoint {path} does not exist", "Pass --checkpoint with a .pt file from `fsan train`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a damaged file to the user
        raise FsanError(
            f"checkpoint {path} cannot be read ({type(exc).__name__})",
            "It is damaged or not an fsan checkpoint; train again or pass another file",
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise FsanError(f"{path} is not an fsan checkpoint", "Pass a best.pt or last.pt from `fsan train`")
    mc = FSANConfig.from_dict(ckpt["model_config"])
    model = FSAN(mc, word_vectors=ckpt["state_dict"]["embedding.weight"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt


def check_compatible(ckpt: dict, store: Store) -> None:
    data = ckpt["data"]
    if data["feature_dim"] != store.feature_dim or data["clips"] != store.clips:
        raise FsanError(
            f"the checkpoint expects {data['clips']} clips of {data['feature_dim']}-d features, "
            f"the data at {store.path} has {store.clips} clips of {store.feature_dim}-d",
            "Use a checkpoint trained on this dataset, or prepare the data with the same settings",
        )


def predict_queries(
    checkpoint: Path, store: Store, queries: list[Query], device: torch.device, top_k: int
) -> list[dict]:
    """Predictions rows (DESIGN.md format) for `queries` with the model in `checkpoint`."""
    model, ckpt = load_checkpoint(checkpoint, device)
    check_compatible(ckpt, store)
    check_vocabulary(ckpt["vocab"], queries, checkpoint)
    nms = ckpt["settings"]["eval"]["nms"]
    return predict_rows(model, ckpt["vocab"], store, queries, device, top_k, nms)


def predict_rows(
    model: FSAN,
    vocab: list[str],
    store: Store,
    queries: list[Query],
    device: torch.device,
    top_k: int,
    nms: float,
) -> list[dict]:
    if not queries:
        return []
    data = split_tensors(store, queries, vocab, model.cfg.max_tokens)
    features = torch.from_numpy(np.array(store.features, dtype=np.float32)).to(device)
    didemo = store.manifest.get("dataset") == "didemo"
    k = 21 if didemo else top_k
    out = predict_segments(model, features, data, k, nms=1.0 if didemo else nms)
    seconds = segments_to_seconds(out["segments"], data.duration, store.clips)
    scores = out["scores"].numpy()
    rows = []
    for i, q in enumerate(queries):
        moments = [[round(float(a), 3), round(float(b), 3), round(float(c), 5)] for (a, b), c in zip(seconds[i], scores[i], strict=True)]
        row = {"video": q.video, "query": q.query, "duration": q.duration, "moments": moments[:top_k]}
        row["nms"] = None if didemo else nms
        if didemo:
            row["annotation_id"] = q.extra.get("annotation_id")
            row["segments"] = out["segments"][i].tolist()
        rows.append(row)
    return rows


def check_vocabulary(vocab: list[str], queries: list[Query], source: Path | str) -> None:
    """A checkpoint that knows under half of the queries' words was trained on other data."""
    known = set(vocab)
    words = [w for q in queries for w in tokenize(q.query)]
    unknown = [w for w in words if w not in known]
    if words and len(unknown) > len(words) / 2:
        examples = ", ".join(list(dict.fromkeys(unknown))[:3])
        raise FsanError(
            f"the vocabulary of {source} knows only {100 * (1 - len(unknown) / len(words)):.0f}% "
            f"of the words in these queries (unknown: {examples}, ...)",
            "Use a checkpoint trained on this dataset, or check --dataset",
        )


# ----------------------------------------------------------------------------- training

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
RUN_INFO = "run.json"  # which store a run trained on, so `--resume` finds it again
RUN_FILES = ("config.toml", "metrics.jsonl", "best.pt", "last.pt", RUN_INFO)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM turned into it) during training; the last checkpoint is intact."""

    def __init__(self, out_dir: Path, step: int, saved_step: int | None) -> None:
        super().__init__(f"interrupted at step {step}")
        self.out_dir, self.step, self.saved_step = out_dir, step, saved_step


def out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: CUDA's OutOfMemoryError, the CPU allocator's RuntimeError, MemoryError."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def memory_error(cfg: Config, dist: Any, device: torch.device, state: LoopState, out_dir: Path) -> FsanError:
    """What to do when a step does not fit: smaller pieces per forward/backward, same gradient."""
    tc = cfg["train"]
    share = dist.largest_share(tc["batch_size"])
    piece = min(tc.get("micro_batch", 0) or share, share)
    half = max(1, piece // 2)
    what = (f"{'the GPU' if device.type == 'cuda' else 'RAM'} ran out at step {state.step + 1} with "
            f"{piece} samples per forward/backward on each process (train.batch_size="
            f"{tc['batch_size']}, train.micro_batch={tc.get('micro_batch', 0)})")
    how = (f"each batch goes through in pieces of {half} samples, with the same gradient and less "
           "memory")
    if state.saved_step is None:
        return FsanError(what, f"Train again with --micro-batch {half}: {how}")
    return FsanError(f"{what}; {out_dir / 'last.pt'} (step {state.saved_step}) is kept",
                     f"Continue with: fsan train --resume {out_dir} --micro-batch {half} ({how})")


def lr_at(step: int, total: int, cfg: dict) -> float:
    """Linear warm-up over `warmup` of the steps, then constant (the paper's plain Adam)."""
    warm = int(cfg["warmup"] * total)
    if warm and step < warm:
        return cfg["lr"] * (step + 1) / warm
    return cfg["lr"]


def sap_schedule(step: int, total: int, tc: dict) -> float:
    """Weight of the SAP losses (eq. 9-12) at `step`: 0 for the first `sap_start` share of the
    steps, then a linear ramp over `sap_warmup` of the steps, then 1."""
    start = tc.get("sap_start", 0.0) * total
    ramp = tc.get("sap_warmup", 0.0) * total
    if step < start:
        return 0.0
    return min(1.0, (step - start) / ramp) if ramp > 0 else 1.0


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


@dataclass
class LoopState:
    """Where training stands; saved in last.pt so `--resume` continues bit for bit."""

    epoch: int = 1  # the epoch in progress, 1-based
    pos: int = 0  # where in this epoch's permutation the next batch starts
    step: int = 0  # optimizer steps taken
    perm: torch.Tensor | None = None  # this epoch's order of the train queries
    sums: torch.Tensor | None = None  # (4,) summed losses of this epoch: total, L^t, L^i, L^o
    seen: int = 0  # samples of this epoch so far
    elapsed: float = 0.0  # seconds of this epoch spent before a resume
    best: dict[str, Any] = field(default_factory=lambda: {"score": -math.inf, "epoch": 0})
    log: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl records
    saved_step: int | None = None  # step of the newest last.pt, None before the first


@dataclass
class TrainingData:
    features: torch.Tensor  # (n_videos, Nv, D) on the device (bf16 on CUDA)
    tokens: torch.Tensor  # (Q, Ns) train queries on the device
    vids: torch.Tensor  # (Q,) their feature rows
    val: SplitTensors | None
    val_queries: list[Query]


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


def training_step(
    model, features, tokens, vids, idx, neg, device, autocast: bool | None = None,
    sap_scale: float | torch.Tensor = 1.0, runner: torch.nn.Module | None = None,
):
    """Positive pass (V, S) and negative pass (V, S^-) of one batch, and the losses (eq. 13).

    idx, neg (B,): query rows of the batch and of its negative captions, drawn on the device;
    a negative that happens to describe the same video is left out of L^t. `runner` is the
    TrainingPass to call (wrapped by DDP or torch.compile); by default one around `model`.
    """
    core = model.module if hasattr(model, "module") else model
    if runner is None:
        runner = TrainingPass(core, device.type == "cuda" if autocast is None else autocast)
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


def check_finite_features(store: Store, features: torch.Tensor) -> None:
    bad = (~torch.isfinite(features.float())).flatten(1).any(1)  # (n_videos,)
    if bool(bad.any()):
        names = [store.videos[i]["video"] for i in bad.nonzero()[:, 0].tolist()]
        raise FsanError(
            f"the features of {len(names)} videos in {store.path} hold NaN or infinite values "
            f"(first: {', '.join(names[:3])})",
            "Fix the feature file and run `fsan prepare` again",
        )


def training_data(mc: FSANConfig, store: Store, device: torch.device) -> TrainingData:
    """Check the store against the settings, then put the train split on the device."""
    if mc.clips != store.clips:
        raise FsanError(
            f"data.clips={mc.clips} but the data at {store.path} was prepared with {store.clips} clips",
            f"Pass --set data.clips={store.clips}, or prepare again with --clips {mc.clips}",
        )
    train_q = store.split("train")
    val_q = store.splits.get("val") or []
    if not train_q:
        raise FsanError(f"the train split at {store.path} is empty", "Prepare the data again")
    tr = split_tensors(store, train_q, store.vocab, mc.max_tokens)
    va = split_tensors(store, val_q, store.vocab, mc.max_tokens) if val_q else None
    feat_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    features = torch.from_numpy(np.asarray(store.features)).to(device=device, dtype=feat_dtype)
    check_finite_features(store, features)
    return TrainingData(features, tr.tokens.to(device), tr.video.to(device), va, val_q)


def piece_that_fits(tc: dict, mc: FSANConfig, data: TrainingData, model: FSAN, dist: Any) -> int:
    """On a CPU: the most samples per forward/backward whose step fits in the free RAM
    (fsan_cli/memory.py) when a whole batch share does not, else 0 (whole shares). Running out of
    RAM gets the process killed without a message."""
    from fsan_cli import memory

    free = memory.available_bytes()
    if free is None:
        return 0
    share = dist.largest_share(tc["batch_size"])
    per_sample = memory.activation_bytes(mc, int(data.tokens.shape[1]))
    # Adam's two moments and the gradients come at the first step
    later = 3 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    piece = memory.fitting_piece(share, per_sample, free - later, memory.local_processes())
    if piece == share:
        return 0
    log(f"A batch share of {share} needs about {memory.step_bytes(per_sample, share) / 2**30:.1f} "
        f"GB for its forward and backward and {free / 2**30:.1f} GB of RAM are free: training "
        f"in pieces of {piece} (train.micro_batch; the same gradient)")
    return piece


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


def set_lr(opt: torch.optim.Optimizer, value: float) -> None:
    """Every group's learning rate; filled in place where it is a tensor (a captured step's)."""
    for g in opt.param_groups:
        if torch.is_tensor(g["lr"]):
            g["lr"].fill_(value)
        else:
            g["lr"] = value


@dataclass
class Run:
    """What the training loop works with, gathered once."""

    model: FSAN
    runner: torch.nn.Module  # the TrainingPass, maybe wrapped by DDP and torch.compile
    opt: torch.optim.Optimizer
    gen: torch.Generator  # permutations and negatives: the same draws on every rank
    data: TrainingData
    cfg: Config
    store: Store
    out_dir: Path
    device: torch.device
    dist: Any  # fsan_cli.distributed.Dist
    captured: CapturedStep | None = None  # train.cuda_graph


def capture_steps(run: Run) -> None:
    """From now on `one_step` goes through a CapturedStep of `step_body` (run.runner must be
    the plain TrainingPass: neither compiled nor wrapped by DDP)."""
    run.runner.cast_cache = False  # autocast's cache and graph capture do not mix
    run.captured = CapturedStep(partial(step_body, run))


def use_cuda_graph(tc: dict, device: torch.device, compile: bool, dist: Any) -> bool:
    """Whether to capture the step (train.cuda_graph, on by default): on CUDA, in one process,
    without --compile (whose reduce-overhead mode captures graphs of its own)."""
    return bool(tc.get("cuda_graph", True)) and device.type == "cuda" and not compile and dist.world == 1


def train(
    cfg: Config,
    store: Store,
    out_dir: Path,
    device: torch.device,
    progress: bool = True,
    resume: bool = False,
    compile: bool = False,
    dist: Any = None,
    checkpoint_every: int | None = None,
) -> dict[str, Any]:
    """Train on store's train split, select on val each epoch, write the run folder.

    resume: continue from out_dir/last.pt (on CPU, bit for bit the uninterrupted run).
    compile: torch.compile the training pass. dist: a fsan_cli.distributed.Dist (one process
    when None); only its rank 0 validates, writes files and shows progress.
    checkpoint_every: save last.pt every N steps too (default: train.checkpoint_every, or 0).
    """
    from fsan_cli.distributed import Dist

    dist = dist or Dist()
    tc = cfg["train"]
    compile_mode = tc.get("compile_mode", "default")
    if compile and compile_mode not in COMPILE_MODES:
        raise FsanError(f"unknown train.compile_mode '{compile_mode}'",
                        f"Use one of: {', '.join(COMPILE_MODES)}")
    set_seed(tc["seed"])
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        if tc.get("threads", 0) > 0:
            torch.set_num_threads(tc["threads"])
        if progress:
            log(f"Training on {torch.get_num_threads()} CPU thread(s)")
    mc = model_config(cfg, int(store.vectors.shape[1]), store.feature_dim)
    check_model_config(mc)
    dist.check_batch(tc["batch_size"])
    data = training_data(mc, store, device)
    model = FSAN(mc, torch.from_numpy(store.vectors)).to(device)
    cpu_auto = device.type == "cpu" and not tc.get("micro_batch", 0)
    piece = piece_that_fits(tc, mc, data, model, dist) if cpu_auto else 0
    if piece:  # recorded in the run's settings; the caller's stay as they were
        tc = {**tc, "micro_batch": piece}
        cfg = {**cfg, "train": tc}
    graphed = use_cuda_graph(tc, device, compile, dist)
    opt = make_optimizer(model, tc, device, graphed)
    gen = torch.Generator(device=device).manual_seed(tc["seed"])
    out_dir = Path(out_dir)
    state = LoopState()
    if resume and (out_dir / "last.pt").is_file():
        state = restore_run(out_dir / "last.pt", model, opt, gen, cfg, store, device, dist)
        ready_optimizer(opt, device, graphed)
    elif dist.main:
        start_run_folder(out_dir, cfg, store)
    if dist.world > 1 and state.step == 0:
        torch.manual_seed(tc["seed"] + dist.rank)  # dropout masks differ between ranks
    runner = dist.wrap(TrainingPass(model, device.type == "cuda"), device, mc)
    if compile:
        runner = torch.compile(runner, mode=compile_mode)
    run = Run(model, runner, opt, gen, data, cfg, store, out_dir, device, dist)
    if graphed:
        capture_steps(run)
        if progress and dist.main:
            log("Capturing the training step as a CUDA graph after 3 eager steps (train.cuda_graph)")
    if checkpoint_every is None:
        checkpoint_every = int(tc.get("checkpoint_every", 0))
    try:
        run_epochs(run, state, progress, checkpoint_every)
    except BaseException as exc:
        if dist.main and state.saved_step is None and not resume:
            remove_run_files(out_dir)  # nothing worth keeping: leave no half run behind
        if isinstance(exc, KeyboardInterrupt):
            raise TrainingInterrupted(out_dir, state.step, state.saved_step) from None
        if out_of_memory(exc):
            raise memory_error(cfg, dist, device, state, out_dir) from None
        raise
    dist.barrier()
    return {"best_epoch": state.best["epoch"], "best_val_miou": state.best["score"],
            "out": str(out_dir), "steps": state.step}


def start_run_folder(out_dir: Path, cfg: Config, store: Store) -> None:
    """Create the run folder (clearing a previous run's files) with config.toml and run.json."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_run_files(out_dir, keep_folder=True)
        atomic_write_text(out_dir / "config.toml", to_toml(cfg))
        info = {"dataset": store.manifest.get("dataset"), "store": str(Path(store.path).resolve())}
        atomic_write_text(out_dir / RUN_INFO, json.dumps(info, indent=2) + "\n")
        atomic_write_text(out_dir / "metrics.jsonl", "")
    except OSError as exc:
        remove_run_files(out_dir)
        raise FsanError(
            f"cannot write the run folder {out_dir} ({exc.strerror or exc})",
            "Choose another --out, or fix its permissions",
        ) from None


def remove_run_files(out_dir: Path, keep_folder: bool = False) -> None:
    if not out_dir.is_dir():
        return
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)
    for tmp in out_dir.glob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)
    if not keep_folder and not any(out_dir.iterdir()):
        out_dir.rmdir()


def run_epochs(run: Run, state: LoopState, progress: bool, every: int) -> None:
    """The epoch loop from wherever `state` stands; saves last.pt at each epoch end and every
    train.checkpoint_every steps, best.pt when val improves."""
    from fsan_cli.output import training_progress

    tc = run.cfg["train"]
    n, bs = run.data.tokens.shape[0], tc["batch_size"]
    steps_per_epoch = math.ceil(n / bs)
    total = steps_per_epoch * tc["epochs"]
    watch = FiniteWatch(run)
    with training_progress(total, enabled=progress and run.dist.main) as bar:
        while state.epoch <= tc["epochs"]:
            run.model.train()
            if state.pos == 0:
                state.perm = torch.randperm(n, device=run.device, generator=run.gen)
                state.sums, state.seen, state.elapsed = torch.zeros(4, device=run.device), 0, 0.0
            t0 = time.perf_counter()
            while state.pos < n:
                idx = state.perm[state.pos : state.pos + bs]
                neg = torch.randint(0, n, idx.shape, device=run.device, generator=run.gen)
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
                    save_last(run, state)
            state.elapsed += time.perf_counter() - t0
            bar.epoch_done(end_epoch(run, state, steps_per_epoch))


def one_step(run: Run, state: LoopState, idx: torch.Tensor, neg: torch.Tensor, total: int) -> torch.Tensor:
    """One optimizer step on this rank's share of the global batch `idx`; returns the loss."""
    tc = run.cfg["train"]
    set_lr(run.opt, lr_at(state.step, total, tc))
    sap_scale = sap_schedule(state.step, total, tc)
    parts = (run.captured or partial(step_body, run))(idx, neg, sap_scale)
    state.sums += parts
    return parts[0]


def step_body(run: Run, idx: torch.Tensor, neg: torch.Tensor, sap_scale: float | torch.Tensor) -> torch.Tensor:
    """Gradients of this rank's share of the batch, clipping and the optimizer's step; the
    detached (total, matching, inner, outer) losses times the share. Launches work only (no
    host sync), so CapturedStep can record it."""
    tc = run.cfg["train"]
    mine, neg_mine, weight = run.dist.shard(idx, neg)
    run.opt.zero_grad(set_to_none=True)
    # DDP averages gradients over ranks; weighted so they are the global batch's mean
    parts = accumulate(run.runner, run.model, run.data, mine, neg_mine, run.device, sap_scale,
                       weight * run.dist.world, int(tc.get("micro_batch", 0)))
    if tc["grad_clip"] > 0:
        params = [p for p in run.model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(params, tc["grad_clip"])
    run.opt.step()
    return parts * weight


def accumulate(
    runner: torch.nn.Module, model: FSAN, data: TrainingData, idx: torch.Tensor, neg: torch.Tensor,
    device: torch.device, sap_scale: float, scale: float, micro_batch: int,
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
                                   sap_scale=sap_scale, runner=runner)
            (losses.total * (scale * share)).backward()
        parts += torch.stack([losses.total, losses.matching, losses.inner, losses.outer]).detach() * share
    return parts


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
        if run.data.val is not None:
            record.update(validate(run.model, run.data.features, run.data.val, run.data.val_queries, run.cfg))
            score = record["val_miou"]
        else:  # no val split: the last epoch (the loss is no guide: the SAP terms join late)
            score = float(state.epoch)
        record["best"] = score > state.best["score"]
        if record["best"]:
            state.best = {"score": score, "epoch": state.epoch}
            payload = checkpoint_payload(run.model, run.cfg, run.store, run.store.vocab,
                                         {"epoch": state.epoch, "val": record})
            atomic_save(payload, run.out_dir / "best.pt")
        state.log.append(record)
        text = "".join(json.dumps(r) + "\n" for r in state.log)
        atomic_write_text(run.out_dir / "metrics.jsonl", text)
    state.epoch, state.pos, state.perm = state.epoch + 1, 0, None
    save_last(run, state)
    return record


# ----------------------------------------------------------------------------- resuming


def save_last(run: Run, state: LoopState) -> None:
    """last.pt: a full checkpoint plus everything `--resume` needs to continue bit for bit."""
    step = state.step
    cuda = run.device.type == "cuda"
    # each rank's own dropout stream and share of the epoch's loss sums, so that a resumed DDP
    # run continues bit for bit
    ranks = run.dist.gather({
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(run.device) if cuda else None,
        "sums": None if state.sums is None else state.sums.cpu(),
    })
    if run.dist.main:
        resume = {
            "step": step, "epoch": state.epoch, "pos": state.pos, "seen": state.seen,
            "elapsed": state.elapsed, "best": state.best, "log": state.log,
            "perm": None if state.perm is None else state.perm.cpu(),
            "sums": None if state.sums is None else sum(r["sums"] for r in ranks),  # all ranks'
            "optimizer": run.opt.state_dict(),
            "generator": run.gen.get_state(),
            "torch_rng": ranks[0]["torch"],
            "cuda_rng": ranks[0]["cuda"],
            "numpy_rng": np.random.get_state(),
            "world": run.dist.world,
            "ranks": ranks,
        }
        extra = {"epoch": state.epoch - 1, "step": step, "resume": resume}
        atomic_save(checkpoint_payload(run.model, run.cfg, run.store, run.store.vocab, extra),
                    run.out_dir / "last.pt")
    run.dist.barrier()
    state.saved_step = step


# settings that decide how the work is split, not what is learnt: `--resume` may change them
FREE_ON_RESUME = {"train.micro_batch", "train.cuda_graph"}


def learning_settings(cfg: Config) -> Config:
    """`cfg` without the FREE_ON_RESUME settings: what two runs must share to be the same run."""
    return {s: {k: v for k, v in vals.items() if f"{s}.{k}" not in FREE_ON_RESUME}
            for s, vals in cfg.items()}


def restore_run(path: Path, model: FSAN, opt, gen, cfg: Config, store: Store, device, dist) -> LoopState:
    """Load last.pt into the model, optimizer and RNGs; the loop state to continue from."""
    model_, ckpt = load_checkpoint(path, "cpu")
    r = ckpt.get("resume")
    if r is None:
        raise FsanError(f"{path} holds no training state", "Train again with --overwrite")
    check_compatible(ckpt, store)
    if ckpt["vocab"] != store.vocab:
        raise FsanError(
            f"the vocabulary of {path} differs from the data at {store.path}",
            "Resume with the data the run was trained on, or train again",
        )
    changed = [f"{s}.{k}" for s, vals in learning_settings(ckpt["settings"]).items()
               for k, v in vals.items() if cfg.get(s, {}).get(k, v) != v]
    if changed:
        raise FsanError(
            f"the run's config.toml differs from {path} in {', '.join(changed[:5])}",
            "Undo the edit, or train a new run with those settings",
        )
    model.load_state_dict(model_.state_dict())
    opt.load_state_dict(r["optimizer"])
    gen.set_state(r["generator"])
    np.random.set_state(r["numpy_rng"])
    ranks = r.get("ranks") or []
    same_world = len(ranks) == dist.world
    # this rank's own dropout stream and share of the epoch's sums; rank 0's for a file that
    # holds none per rank
    mine = ranks[dist.rank] if same_world else {"torch": r["torch_rng"], "cuda": r["cuda_rng"], "sums": r["sums"]}
    torch.set_rng_state(mine["torch"])
    if mine["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], device)
    sums = mine["sums"]
    if not same_world and dist.world > 1:  # another number of processes: fresh streams per rank,
        torch.manual_seed(cfg["train"]["seed"] + dist.rank + r["step"])
        if sums is not None and not dist.main:  # and rank 0 carries the epoch's sums so far
            sums = torch.zeros_like(sums)
    to = partial(torch.Tensor.to, device=device)
    return LoopState(
        epoch=r["epoch"], pos=r["pos"], step=r["step"], seen=r["seen"], elapsed=r["elapsed"],
        perm=None if r["perm"] is None else to(r["perm"]),
        sums=None if sums is None else to(sums),
        best=r["best"], log=r["log"], saved_step=r["step"],
    )


def read_run(out_dir: Path) -> tuple[dict[str, Any], Path]:
    """(run.json, config.toml path) of a run folder to resume; errors name what is missing."""
    out_dir = Path(out_dir)
    info_path, cfg_path = out_dir / RUN_INFO, out_dir / "config.toml"
    if not out_dir.is_dir():
        raise FsanError(f"run folder {out_dir} does not exist", "Pass --resume with a folder `fsan train` wrote")
    if not info_path.is_file() or not cfg_path.is_file():
        raise FsanError(
            f"{out_dir} is not a resumable run folder (no {RUN_INFO} or config.toml)",
            "Pass --resume with a folder `fsan train` wrote",
        )
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if not isinstance(info, dict) or "dataset" not in info:
            raise ValueError("no dataset")
    except (ValueError, OSError):
        raise FsanError(f"{info_path} is damaged", "Train again with --overwrite") from None
    return info, cfg_path


def make_optimizer(model: FSAN, tc: dict, device: torch.device, captured: bool = False) -> torch.optim.Optimizer:
    """Adam (paper §4.2; AdamW when train.weight_decay > 0), fused on CUDA; for a captured
    step, capturable with its learning rate in a device tensor."""
    params = [p for p in model.parameters() if p.requires_grad]
    extra = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(params, lr=tc["lr"], weight_decay=tc["weight_decay"],
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


def validate(model: FSAN, features: torch.Tensor, data: SplitTensors, queries: list[Query], cfg: Config) -> dict[str, float]:
    """Top-1 mIoU and R@1 at IoU 0.3/0.5 on the validation split (selection uses val only)."""
    out = predict_segments(model, features, data, 1, cfg["eval"]["nms"])
    sec = segments_to_seconds(out["segments"], data.duration, model.cfg.clips)[:, 0]
    ious = top1_iou(sec, [q.times for q in queries])
    whole = (out["segments"][:, 0, 0] == 0) & (out["segments"][:, 0, 1] == model.cfg.clips - 1)
    return {
        "val_miou": float(100 * ious.clip(0).mean()),
        "val_r1_iou0.3": float(100 * (ious >= 0.3).mean()),
        "val_r1_iou0.5": float(100 * (ious >= 0.5).mean()),
        "val_whole_video": float(100 * whole.float().mean()),
        "val_distinct": int(torch.unique(out["segments"][:, 0], dim=0).shape[0]),
    }
