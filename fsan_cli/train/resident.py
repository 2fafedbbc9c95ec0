"""The whole train split resident in memory (on the GPU when training there): features, token
ids and each query's feature row, checked once before the first step."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fsan_cli.core import checkpoint
from fsan_cli.core.errors import FsanError
from fsan_cli.core.output import warn
from fsan_cli.core.text import TOKENIZER, WordSource, encode_texts, query_tokens, tokenize
from fsan_cli.data.store import Query, Store, video_rows
from fsan_cli.train.matching import sentences_to_match
from models.config import FSANConfig


@dataclass
class TrainingData:
    features: torch.Tensor  # (n_videos, Nv, D) on the device (bf16 on CUDA)
    tokens: torch.Tensor  # (Q, Ns) train queries on the device
    vids: torch.Tensor  # (Q,) their feature rows
    val_queries: list[Query] = field(default_factory=list)  # chooses the best epoch
    words: WordSource | None = None  # embeds val words outside the vocabulary, as evaluate will
    # without annotated val queries: the val sentences that choose the epoch by matching
    # (fsan_cli/train/matching.py); empty where val has times, or fewer than two videos
    match_queries: list[Query] = field(default_factory=list)
    normalized: bool = True  # the store's clips are L2-normalised (train.compose keeps them so)


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
    val_q = [q for q in store.splits.get("val") or [] if q.times]  # only annotated queries can select
    if not train_q:
        raise FsanError(f"the train split at {store.path} is empty", "Prepare the data again")
    vids = torch.from_numpy(video_rows(store, train_q)).to(device)
    video_rows(store, val_q)
    match_q = [] if val_q else sentences_to_match(store)
    word_to_id = {w: i for i, w in enumerate(store.vocab)}
    version = checkpoint.tokenizer_of_store(store)  # the store's vocabulary's: 1 if of an older fsan
    if version < TOKENIZER and any(tokenize(q.query, version) != tokenize(q.query) for q in train_q):
        warn(f"the data at {store.path} was prepared by an older fsan, whose tokenizer keeps words "
             "like \"man's\" whole (read as <unk>); training reads them so. Run `fsan prepare` "
             "again to split them as GloVe does")
    tokens = torch.from_numpy(encode_texts([q.query for q in train_q], word_to_id, mc.max_tokens, version))
    feat_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    features = torch.from_numpy(np.asarray(store.features)).to(device=device, dtype=feat_dtype)
    check_finite_features(store, features)
    return TrainingData(features, tokens.to(device), vids, val_q,
                        val_words(store, val_q or match_q, mc.max_tokens), match_q,
                        bool(store.manifest.get("normalize", True)))


def val_words(store: Store, val_q: list[Query], max_tokens: int) -> WordSource | None:
    """The store's word vectors, with the val queries' words outside the vocabulary looked up
    now: validation then embeds them as `fsan evaluate` and `fsan ground` will with the
    checkpoint, and a source that changed since `fsan prepare` stops training before it starts."""
    words = WordSource.of(checkpoint.word_vectors_of(store), store.vocab, f"the data at {store.path}",
                          redo="run `fsan prepare` again with these vectors")
    if words is not None:
        known = set(store.vocab)
        version = checkpoint.tokenizer_of_store(store)
        words.lookup(sorted({w for q in val_q for w in query_tokens(q.query, max_tokens, version)
                             if w not in known}))
    return words
