"""The embedded synthetic grounding benchmark (`--dataset synthetic`, the default).

A real weakly supervised grounding problem, generated deterministically on first use:

- Each video has several captioned events (and uncaptioned background activity). An event is a
  (verb, object) pair of real English words; its clips carry a fixed hidden random projection of
  the mean GloVe vector of those two words, added to a per-video background and noise.
- Captions are real words: a subject, the verb, an article, the object, and sometimes a
  non-visual distractor word ("slowly", "again", ...). Several captions per video, with spans
  that overlap as they do in ActivityNet-Captions.
- Moment spans follow ActivityNet-Captions' train annotations: a histogram of (relative length,
  relative start) measured on its 37,417 valid train pairs (`_SPAN_HIST` below), durations from
  its quantiles, captions per video from its counts. So the best fixed segment is a strong
  prior (the whole video, as on the real benchmark), and no fixed segment wins.
- Training reads only (video, caption) pairs; the times in train.jsonl are never used for it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fsan_cli.core.errors import FsanError
from fsan_cli.core.output import log
from fsan_cli.core.settings import load_settings
from fsan_cli.core.text import TOKENIZER, build_vocab, load_word_vectors, vectors_record
from fsan_cli.data.features import pool_clips
from fsan_cli.data.store import Query, load_store, store_exists, write_store

GENERATOR_VERSION = 3

VERBS = ["opens", "closes", "cuts", "throws", "catches", "kicks", "paints", "washes", "cleans", "pours", "drinks", "eats", "holds", "lifts", "pushes", "pulls", "carries", "drops", "folds", "climbs", "rides", "plays", "fixes", "builds", "writes", "reads", "cooks", "shakes", "brushes", "mixes", "sweeps"]
OBJECTS = ["door", "window", "box", "ball", "bottle", "cup", "plate", "knife", "bike", "car", "horse", "guitar", "piano", "table", "chair", "bed", "book", "paper", "phone", "laptop", "shirt", "towel", "floor", "wall", "fence", "rope", "boat", "kite", "dog", "cat", "tree", "bread", "cake", "rock", "drum", "hat", "shoe", "bag"]
SUBJECTS = ("a person", "the man", "a woman", "someone", "the boy", "a girl", "the player")
DISTRACTORS = ["slowly", "quickly", "again", "carefully", "still", "also", "then", "finally"]

# ActivityNet-Captions train: share (per mille) of pairs by relative length (rows: 0-0.1, ...,
# 0.9-1.0) and relative start within the room left, start / (1 - length) (columns: 5 bins).
_SPAN_HIST = np.array(
    [
        [103, 34, 29, 29, 77],
        [86, 22, 18, 18, 56],
        [54, 18, 14, 13, 49],
        [33, 13, 12, 9, 35],
        [24, 10, 19, 7, 23],
        [15, 7, 12, 5, 21],
        [7, 4, 5, 4, 15],
        [6, 2, 4, 3, 10],
        [6, 3, 3, 2, 6],
        [40, 3, 3, 2, 7],
    ],
    dtype=np.float64,
)
# ActivityNet-Captions train durations, deciles (s), and captions per video (2..8).
_DURATION_DECILES = np.array([1.6, 30.3, 51.8, 70.5, 91.1, 113.9, 136.2, 160.3, 184.6, 210.6, 755.1])
_CAPTIONS_PER_VIDEO = np.array([1936, 4125, 1891, 782, 510, 313, 185], dtype=np.float64)

DEFAULT_SIZES = {"train": 1600, "val": 200, "test": 300}
FEATURE_DIM = 128
ROWS_PER_SECOND = 0.5
NOISE = 0.6


def sample_spans(rng: np.random.Generator, n: int) -> np.ndarray:
    """n relative (start, end) pairs in [0, 1] drawn from the ActivityNet histogram."""
    p = (_SPAN_HIST / _SPAN_HIST.sum()).ravel()
    cells = rng.choice(p.size, size=n, p=p)
    li, si = np.divmod(cells, _SPAN_HIST.shape[1])
    length = np.clip((li + rng.random(n)) / _SPAN_HIST.shape[0], 0.02, 1.0)
    start = (si + rng.random(n)) / _SPAN_HIST.shape[1] * (1 - length)
    return np.stack([start, start + length], 1)


def _sample_durations(rng: np.random.Generator, n: int) -> np.ndarray:
    q = rng.random(n) * 10
    lo = np.floor(q).astype(int)
    d = _DURATION_DECILES[lo] + (q - lo) * (_DURATION_DECILES[lo + 1] - _DURATION_DECILES[lo])
    return np.clip(d, 8.0, 300.0)


def _caption(rng: np.random.Generator, verb: str, obj: str) -> str:
    words = [SUBJECTS[rng.integers(len(SUBJECTS))], verb, "the" if rng.random() < 0.6 else "a", obj]
    if rng.random() < 0.4:
        words.insert(1 if rng.random() < 0.5 else 4, DISTRACTORS[rng.integers(len(DISTRACTORS))])
    return " ".join(words)


def generate(sizes: dict[str, int] | None = None, seed: int = 1234, clips: int = 32):
    """Build the benchmark in memory: (features, videos, vocab, vectors, splits, stats)."""
    sizes = sizes or DEFAULT_SIZES
    rng = np.random.default_rng(seed)
    wv = load_word_vectors(None, needed=set(VERBS) | set(OBJECTS))
    index = wv.index()
    hidden = rng.normal(0, 1 / np.sqrt(wv.dim), (wv.dim, FEATURE_DIM))  # fixed hidden projection

    def event_vector(verb: str, obj: str) -> np.ndarray:
        e = wv.vectors[index[verb]] / np.linalg.norm(wv.vectors[index[verb]])
        e = e + wv.vectors[index[obj]] / np.linalg.norm(wv.vectors[index[obj]])
        x = e @ hidden
        return x / np.linalg.norm(x)

    p_caps = _CAPTIONS_PER_VIDEO / _CAPTIONS_PER_VIDEO.sum()
    features, videos, splits = [], [], {}
    for split, n_videos in sizes.items():
        queries = []
        durations = _sample_durations(rng, n_videos)
        for k in range(n_videos):
            vid = f"syn_{split}_{k:05d}"
            duration = float(round(durations[k], 2))
            n_caps = 2 + rng.choice(p_caps.size, p=p_caps)
            n_events = n_caps + rng.integers(0, 3)  # uncaptioned background activity too
            verbs = rng.choice(len(VERBS), n_events, replace=False)
            objs = rng.choice(len(OBJECTS), n_events, replace=False)
            spans = sample_spans(rng, n_events)
            rows = max(4, int(round(duration * ROWS_PER_SECOND)))
            t = (np.arange(rows) + 0.5) / rows  # (T,) row centres, relative time
            # per-video background (norm ~1) plus per-row noise (norm ~NOISE); events add norm 1
            x = rng.normal(0, 1 / np.sqrt(FEATURE_DIM), FEATURE_DIM)[None].repeat(rows, 0)
            x += rng.normal(0, NOISE / np.sqrt(FEATURE_DIM), (rows, FEATURE_DIM))
            for e in range(n_events):
                inside = (t >= spans[e, 0]) & (t < spans[e, 1])
                if not inside.any():  # a span shorter than a row still marks its nearest row
                    inside[np.argmin(np.abs(t - spans[e].mean()))] = True
                x[inside] += event_vector(VERBS[verbs[e]], OBJECTS[objs[e]])
            features.append(pool_clips(x.astype(np.float32), clips))
            videos.append({"video": vid, "duration": duration, "rows": rows})
            for e in range(n_caps):
                s, en = spans[e] * duration
                queries.append(
                    Query(
                        vid,
                        _caption(rng, VERBS[verbs[e]], OBJECTS[objs[e]]),
                        duration,
                        [[round(float(s), 2), round(float(en), 2)]],
                    )
                )
        splits[split] = queries
    feats = np.stack(features).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=-1, keepdims=True).clip(1e-6)  # prepare's row L2 norm
    all_wv = load_word_vectors(None, needed={w for q in splits["train"] for w in q.query.split()})
    vocab, vectors, stats = build_vocab((q.query for q in splits["train"]), all_wv, TOKENIZER)
    return feats, videos, vocab, vectors, splits, stats


def ensure_synthetic(
    data_dir: Path, clips: int = 32, seed: int = 1234, sizes: dict[str, int] | None = None
) -> Path:
    """The store of N_v = `clips` under data_dir, generated on first use: one store per N_v,
    `synthetic` for the preset's and `synthetic-clipsN` for any other. A store is never
    generated again in place, since runs were made from it (their run.json names it).

    `sizes` (videos per split) is for tests; an existing store of any size is reused.
    """
    data_dir = Path(data_dir)
    shared, own = data_dir / "synthetic", data_dir / f"synthetic-clips{clips}"
    for path in (shared, own):
        if store_exists(path) and _recipe_matches(path, clips, seed):
            return path
    path = shared if clips == _preset_clips() and not store_exists(shared) else own
    if store_exists(path):
        raise FsanError(
            f"the synthetic store at {path} was generated by another version of fsan (or seed), "
            "and runs may have been trained on it, so it is not generated again in place",
            f"Move {path} away (it is generated again on first use), or pass another --data-dir",
        )
    log(f"Generating the synthetic benchmark with N_v = {clips} into {path} (once) ...")
    feats, videos, vocab, vectors, splits, stats = generate(sizes, seed=seed, clips=clips)
    manifest = {
        "dataset": "synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "sizes": sizes or DEFAULT_SIZES,
        "normalize": True,
        "pca": None,
        "word_vectors": vectors_record(None, vocab, vectors),
        "tokenizer": TOKENIZER,  # not in the recipe: captions have no apostrophes, both versions agree
        "oov_rate": stats["oov_rate"],
        "inputs": [],
    }
    write_store(path, manifest, feats, videos, vocab, vectors, splits, where="--data-dir")
    return path


def _recipe_matches(path: Path, clips: int, seed: int) -> bool:
    m = load_store(path, mmap=True).manifest
    return m.get("generator_version") == GENERATOR_VERSION and m.get("clips") == clips and m.get("seed") == seed


def _preset_clips() -> int:
    return load_settings("synthetic").data.clips
