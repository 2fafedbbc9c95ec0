"""Training and prediction: the whole split lives in memory (on the GPU when training there),
batches are gathered by index, negatives are sampled on the device, checkpoints are atomic."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
    """Top-k segments (clip ids) and scores for every query, batched; optional alignment maps."""
    model.eval()
    device = features.device
    segs, scores, maps, scs = [], [], [], []
    for i in range(0, data.tokens.shape[0], batch_size):
        tok = data.tokens[i : i + batch_size].to(device)
        out = model(features[data.video[i : i + batch_size].to(device)].float(), tok)
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
    """IoU of each query's top-1 moment with its best-matching ground-truth moment."""
    m = max(len(g) for g in gt)
    gts = np.full((len(gt), m, 2), np.nan)
    for i, g in enumerate(gt):
        gts[i, : len(g)] = g
    p = pred[:, None, :]
    inter = (np.minimum(p[..., 1], gts[..., 1]) - np.maximum(p[..., 0], gts[..., 0])).clip(0)
    union = np.maximum(p[..., 1], gts[..., 1]) - np.minimum(p[..., 0], gts[..., 0])
    ious = inter / np.where(union > 0, union, 1)
    return np.nan_to_num(ious, nan=-1.0).max(1)


# ----------------------------------------------------------------------------- checkpoints


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, fsync, rename: a crash never leaves a half file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
    features = torch.from_numpy(np.asarray(store.features)).to(device)
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


def unknown_words(text: str, vocab: list[str]) -> list[str]:
    known = set(vocab)
    return [w for w in tokenize(text) if w not in known]


# ----------------------------------------------------------------------------- training


def lr_at(step: int, total: int, cfg: dict) -> float:
    """Linear warm-up over `warmup` of the steps, then constant (the paper's plain Adam)."""
    warm = int(cfg["warmup"] * total)
    if warm and step < warm:
        return cfg["lr"] * (step + 1) / warm
    return cfg["lr"]


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def train(
    cfg: Config,
    store: Store,
    out_dir: Path,
    device: torch.device,
    progress: bool = True,
) -> dict[str, Any]:
    """Train on store's train split, select on val each epoch, write the run folder."""
    tc = cfg["train"]
    set_seed(tc["seed"])
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    mc = model_config(cfg, int(store.vectors.shape[1]), store.feature_dim)
    check_model_config(mc)
    if mc.clips != store.clips:
        raise FsanError(
            f"data.clips={mc.clips} but the data at {store.path} was prepared with {store.clips} clips",
            f"Pass --set data.clips={store.clips}, or prepare again with --clips {mc.clips}",
        )
    vocab = store.vocab
    train_q = store.split("train")
    val_q = store.splits.get("val") or []
    if not train_q:
        raise FsanError(f"the train split at {store.path} is empty", "Prepare the data again")
    tr = split_tensors(store, train_q, vocab, mc.max_tokens)
    va = split_tensors(store, val_q, vocab, mc.max_tokens) if val_q else None
    feat_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    features = torch.from_numpy(np.asarray(store.features)).to(device=device, dtype=feat_dtype)
    tokens, vids = tr.tokens.to(device), tr.video.to(device)

    model = FSAN(mc, torch.from_numpy(store.vectors)).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(model, tc, device)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.toml").write_text(to_toml(cfg), encoding="utf-8")
    log_path = out_dir / "metrics.jsonl"
    log_path.write_text("", encoding="utf-8")

    n, bs = tokens.shape[0], tc["batch_size"]
    steps_per_epoch = math.ceil(n / bs)
    total = steps_per_epoch * tc["epochs"]
    gen = torch.Generator(device=device).manual_seed(tc["seed"])
    best = {"score": -math.inf, "epoch": 0}
    step = 0
    from fsan_cli.output import training_progress

    with training_progress(total, enabled=progress) as bar:
        for epoch in range(1, tc["epochs"] + 1):
            model.train()
            perm = torch.randperm(n, device=device, generator=gen)
            t0, seen, loss_sum = time.perf_counter(), 0, torch.zeros((), device=device)
            parts = torch.zeros(3, device=device)
            for i in range(0, n, bs):
                idx = perm[i : i + bs]
                neg = torch.randint(0, n, idx.shape, device=device, generator=gen)
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, total, tc)
                ramp = tc["sap_warmup"] * total
                sap_scale = min(1.0, step / ramp) if ramp > 0 else 1.0
                losses = training_step(model, features, tokens, vids, idx, neg, device, sap_scale=sap_scale)
                opt.zero_grad(set_to_none=True)
                losses.total.backward()
                if tc["grad_clip"] > 0:
                    torch.nn.utils.clip_grad_norm_(params, tc["grad_clip"])
                opt.step()
                step += 1
                seen += idx.numel()
                loss_sum += losses.total.detach()
                parts += torch.stack([losses.matching, losses.inner, losses.outer]).detach()
                if step % 10 == 0 or i + bs >= n:
                    loss = loss_sum.item() / max(1, (i // bs) + 1)
                    if not math.isfinite(loss):
                        raise FsanError(
                            f"the loss became {loss} at step {step}",
                            "Lower train.lr or set train.grad_clip, then train again",
                        )
                    bar.update(step, epoch=epoch, loss=loss, rate=seen / (time.perf_counter() - t0))
            record = {
                "epoch": epoch,
                "step": step,
                "loss": loss_sum.item() / steps_per_epoch,
                **dict(zip(("loss_matching", "loss_inner", "loss_outer"), (parts / steps_per_epoch).tolist(), strict=True)),
                "samples_per_s": seen / (time.perf_counter() - t0),
            }
            if va is not None:
                record.update(validate(model, features, va, val_q, cfg))
                score = record["val_miou"]
            else:
                score = -record["loss"]
            improved = score > best["score"]
            if improved:
                best = {"score": score, "epoch": epoch}
                atomic_save(checkpoint_payload(model, cfg, store, vocab, {"epoch": epoch, "val": record}), out_dir / "best.pt")
            record["best"] = improved
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            bar.epoch_done(record)
    atomic_save(checkpoint_payload(model, cfg, store, vocab, {"epoch": tc["epochs"]}), out_dir / "last.pt")
    return {"best_epoch": best["epoch"], "best_val_miou": best["score"], "out": str(out_dir)}


def make_optimizer(model: FSAN, tc: dict, device: torch.device) -> torch.optim.Optimizer:
    """Adam (paper §4.2; AdamW when train.weight_decay > 0), fused on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(params, lr=tc["lr"], weight_decay=tc["weight_decay"], **extra)


def training_step(
    model, features, tokens, vids, idx, neg, device, autocast: bool | None = None, sap_scale: float = 1.0
):
    """Positive pass (V, S) and negative pass (V, S^-) of one batch, and the losses (eq. 13).

    idx, neg (B,): query rows of the batch and of its negative captions, drawn on the device;
    a negative that happens to describe the same video is left out of L^t.
    """
    video = features[vids[idx]].float()  # (B, Nv, D)
    pos_tok, neg_tok = tokens[idx], tokens[neg]
    neg_ok = vids[neg] != vids[idx]
    use_bf16 = device.type == "cuda" if autocast is None else autocast
    core = model.module if hasattr(model, "module") else model
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        pos = model(video, pos_tok)
        neg_out = model(video, neg_tok, negative_token_mask(pos_tok, neg_tok))
        neg_video = model(features[vids[neg]].float(), pos_tok) if core.cfg.negative_video else None
    return fsan_losses(core, pos, neg_out, neg_ok, neg_video, sap_scale)


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
