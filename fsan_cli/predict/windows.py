"""Videos of any length: a video longer than the durations the model was trained on is read in
overlapping windows at the model's own resolution, and the windows' answers are merged.

A model sees N_v clips of a video of the duration range it was trained on (the checkpoint's
data.durations, core/checkpoint.durations_of). Pooling a 20-minute video into the same N_v clips
makes each clip 15 s instead of 2 s, and the answers fall apart (DESIGN.md, "Any length"). So:

- `Windowing.of(data)`: the trained range; None for a checkpoint that records none (an older
  fsan): every video takes today's path.
- A video within the range (duration <= the longest training video) is answered exactly as
  before: `answer`/`ground` hand it to the Predictor unchanged (bit-identical).
- A longer video is cut into windows of the train split's median duration, a stride of
  half a window (the last window ends at the video's end), so any moment up to half a window
  lies whole inside one. Each window's raw rows are pooled to N_v exactly as a short video's
  (Predictor.video_clips). Every (query, window) pair goes through the Predictor's batched
  forward at once; within a window the segments rank as a short video's (SC, plus the span prior
  where PRIOR_IN_WINDOWS), and the windows rank by word coverage: each word's highest response
  in the alignment map P over the window's clips, averaged over the words
  (models.segments.word_coverage). It picked the right part of a long video more often than the
  matching score S(V, S) of eq. 7, and far more than the segment score SC, which is centred per
  window and does not compare (measured in docs/method.md, "Long videos").
- `merge`: the windows' candidates in seconds, the windows taking turns (every window's first
  answer, best window first, then every window's second, ...), NMS across windows at the
  Predictor's threshold, top-k. A moment's score is its window's coverage, capped by the scores
  ranked above it (never rising down the list).

The row of a windowed answer says which window answered ("window", and "windows" per moment).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fsan_cli.core.output import counted, warn
from fsan_cli.data.features import video_clips
from fsan_cli.data.store import video_rows
from fsan_cli.predict.answers import Answers, Grounding, Predictions, combine
from fsan_cli.predict.predictor import Predictor, zeroed
from models.segments import segments_to_seconds

WINDOW_PERCENTILE = "p50"  # a window spans the train split's median duration (measured: docs/method.md)
STRIDE = 0.5  # windows start half a window apart
PRIOR_IN_WINDOWS = True  # the span prior ranks segments within a window (measured: docs/method.md)
INTERLEAVE = True  # the merged top-k take the windows' candidates in turns (measured: docs/method.md)
RANK_BY = "coverage"  # windows rank by word coverage (models.segments.word_coverage), not S(V, S)


@dataclass(frozen=True)
class Windowing:
    window_s: float  # seconds a window spans
    longest_s: float  # the longest training video: longer videos are windowed

    @classmethod
    def of(cls, data: dict[str, Any]) -> Windowing | None:
        """The checkpoint's trained range (data.durations), or None where it records none or a
        damaged one (no windowing: today's answers)."""
        d = data.get("durations")
        try:
            if any(isinstance(d[k], bool) for k in (WINDOW_PERCENTILE, "max")):  # float(True) is 1.0
                return None
            window, longest = float(d[WINDOW_PERCENTILE]), float(d["max"])
        except (TypeError, KeyError, ValueError):
            return None
        if not (math.isfinite(window) and math.isfinite(longest) and 0 < window <= longest):
            return None
        return cls(window, longest)

    def spans(self, rows: int, duration: float) -> np.ndarray | None:
        """(W, 2) row ranges [a, b) of the windows over a video of `rows` feature rows and
        `duration` seconds, or None where the video is within the trained range."""
        if not duration > self.longest_s or rows < 2:
            return None
        size = int(min(rows, max(1, round(self.window_s * rows / duration))))
        if size >= rows:  # one window would be the whole video: today's path
            return None
        stride = max(1, int(round(size * STRIDE)))
        starts = np.arange(0, rows - size + 1, stride, dtype=np.int64)
        if starts[-1] + size < rows:
            starts = np.append(starts, rows - size)
        return np.stack([starts, starts + size], 1)


@dataclass
class Long:
    """The windows of the long videos asked about: clips (W, N_v, D), each window's video (a
    key into the caller's videos) and its [start, end) seconds."""

    clips: np.ndarray
    video: np.ndarray  # (W,) index of the window's video
    seconds: np.ndarray  # (W, 2)


def cut(predictor: Predictor, rows: Sequence[np.ndarray], durations: Sequence[float],
        names: Sequence[str], windowing: Windowing, pooled: Sequence[bool] | None = None
        ) -> tuple[list[bool], Long | None]:
    """Which videos are long, and their windows pooled to N_v (a loop over videos and their
    windows is the pooling's own, as `fsan prepare` pools video by video); a video whose rows
    are its pooled clips already (`pooled`, fsan export) is not cut."""
    clips, owner, seconds, long = [], [], [], []
    pooled = pooled if pooled is not None else [False] * len(rows)
    for v, (x, d, name) in enumerate(zip(rows, durations, names, strict=True)):
        spans = None if pooled[v] else windowing.spans(len(x), float(d))
        long.append(spans is not None)
        if spans is None:
            continue
        if not np.isfinite(x).all():  # said once for the video, not once per window that holds them
            x = zeroed(x, name)
        clips += [predictor.video_clips(x[a:b], name) for a, b in spans]
        owner.append(np.full(len(spans), v, np.int64))
        seconds.append(spans * (float(d) / len(x)))
    if not clips:
        return long, None
    return long, Long(np.stack(clips), np.concatenate(owner), np.concatenate(seconds))


def pairs(window_video: np.ndarray, video: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query, window of its video) pair: (P,) query, (P,) window, (P,) slot of the window
    among its video's (in the order of `window_video`)."""
    count = np.bincount(window_video, minlength=int(video.max(initial=0)) + 1)
    first = np.concatenate([[0], np.cumsum(count)[:-1]])
    n = count[video]
    query = np.repeat(np.arange(len(video)), n)
    slot = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    return query, np.argsort(window_video, kind="stable")[first[video][query] + slot], slot


def across_cuts(seconds: np.ndarray, window_score: np.ndarray, valid: np.ndarray, cut: np.ndarray,
                span: np.ndarray) -> np.ndarray:
    """(Q, W) window scores where a window whose top answer touches a cut (`cut`: an edge of the
    window that is not the video's) ranks just below the best window that sees across that cut
    (the cut strictly inside its `span`, (Q, W, 2) seconds): the moment it cuts lies whole
    there, half a window on. Such a window keeps its rank among every other window (ranking it
    after all of them cost R@1 on real spans, whose long moments often reach a window's edge)."""
    top = seconds[:, :, 0, :]  # (Q, W, 2) each window's top answer
    left = np.isclose(top[..., 0], span[..., 0])
    point = np.where(left, span[..., 0], span[..., 1])  # (Q, W) the cut it touches
    sees = ((span[:, None, :, 0] < point[:, :, None]) & (point[:, :, None] < span[:, None, :, 1])
            & valid[:, None, :])  # (Q, A, B): window B sees across window A's cut
    best = np.where(sees, window_score[:, None, :], -np.inf).max(2)  # (Q, A)
    below = cut & np.isfinite(best) & (best <= window_score)
    return np.where(below, np.nextafter(best.astype(window_score.dtype), -np.inf), window_score)


def merge(seconds: np.ndarray, window_score: np.ndarray, valid: np.ndarray, k: int,
          nms: float, cut: np.ndarray | None = None, begin: np.ndarray | None = None,
          span: np.ndarray | None = None, interleave: bool = INTERLEAVE) -> np.ndarray:
    """(Q, W, c, 2) candidates in seconds (each window's own top-c, best first), (Q, W) the
    windows' scores, (Q, W) which windows exist -> (Q, k) flat indices into W * c: the best
    window's candidates first, in its own order, greedy NMS across windows in seconds (a
    suppressed candidate is used only where fewer than k survive). With `cut` and `span`, a
    window whose top answer touches a cut ranks just below the window that sees across it
    (`across_cuts`). Windows of equal score rank by `begin` (Q, W), their start: the answer
    does not depend on the windows' order. With `interleave`, the windows' candidates take
    turns instead: every window's first (best window first), then every window's second, ...
    Vectorised over queries; k rounds."""
    q, w, c, _ = seconds.shape
    if cut is not None and span is not None:
        window_score = across_cuts(seconds, window_score, valid, cut, span)
    rank = np.broadcast_to(np.arange(c), (q, w, c)).reshape(q, -1)
    score = np.where(valid, window_score, -np.inf)[:, :, None].repeat(c, 2).reshape(q, -1)
    begin = np.zeros((q, w * c)) if begin is None else begin[:, :, None].repeat(c, 2).reshape(q, -1)
    if interleave:
        order = np.lexsort((begin, -score, rank), axis=-1)  # each window's first, then each's second
    else:
        order = np.lexsort((rank, begin, -score), axis=-1)  # best window first, its own ranks inside
    ok = np.take_along_axis(np.isfinite(score), order, 1)
    flat = seconds.reshape(q, -1, 2)
    start = np.take_along_axis(flat[..., 0], order, 1)
    end = np.take_along_axis(flat[..., 1], order, 1)
    taken = np.zeros_like(ok)
    suppressed = np.zeros_like(ok)
    picks = []
    for _ in range(min(k, w * c)):
        free = ok & ~taken & ~suppressed
        fallback = ok & ~taken
        best = np.where(free.any(1), free.argmax(1), fallback.argmax(1))  # first in order
        picks.append(best)
        taken[np.arange(q), best] = True
        bs, be = start[np.arange(q), best][:, None], end[np.arange(q), best][:, None]
        inter = (np.minimum(be, end) - np.maximum(bs, start)).clip(0)
        union = np.maximum(be, end) - np.minimum(bs, start)
        suppressed |= inter / np.where(union > 0, union, 1) > nms
    return np.take_along_axis(order, np.stack(picks, 1), 1)


def answer_long(predictor: Predictor, long: Long, video: np.ndarray, texts: Sequence[str], top_k: int,
                prior: bool = PRIOR_IN_WINDOWS,
                progress: Callable[[int], None] | None = None, rank_by: str | np.ndarray = RANK_BY,
                cuts: bool = True, interleave: bool = INTERLEAVE) -> tuple[Answers, np.ndarray]:
    """Answers of queries about long videos (video (Q,) indexes the videos `long` cut) and (Q,)
    the window each top answer came from. `rank_by` "match" ranks windows by S(V, S) instead
    of word coverage, "sc" by their top answer's score, a (P,) array by that score of each (query, window)
    pair (in `pairs` order), and `cuts=False` ignores where top answers touch a cut: the
    alternatives benchmarks/quality/long_videos.py measures."""
    ids = predictor.encode(texts)
    query, window, slot = pairs(long.video, video)
    features = torch.from_numpy(np.ascontiguousarray(long.clips, np.float32)).to(predictor.device)
    k = min(top_k, predictor.clips * (predictor.clips + 1) // 2)
    named = rank_by if isinstance(rank_by, str) else ""
    out = predictor.predict(features, window, ids[query], k, predictor.nms, plain=True,
                            match=named == "match", coverage=named == "coverage")
    span = long.seconds[window]
    length = torch.from_numpy(span[:, 1] - span[:, 0])
    used = predictor.span_prior is not None and prior
    ranked = [out if out.plain is None else (out if used else out.plain)]
    if used and out.plain is not None:
        ranked.append(out.plain)
    q, w = len(texts), int(slot.max()) + 1
    ends = np.zeros(int(long.video.max()) + 1)  # the end of each window's video (by video index)
    np.maximum.at(ends, long.video, long.seconds[:, 1])
    ends = ends[long.video]
    valid = np.zeros((q, w), bool)
    valid[query, slot] = True
    match = np.full((q, w), -np.inf, np.float32)
    by = {"match": out.match, "coverage": out.coverage}
    match[query, slot] = rank_by if isinstance(rank_by, np.ndarray) else by.get(rank_by, ranked[0].scores[:, 0])
    begin = np.zeros((q, w))
    begin[query, slot] = long.seconds[window, 0]
    spans = np.zeros((q, w, 2))
    spans[query, slot] = long.seconds[window]
    results = []
    for r in ranked:  # the answers, and without the prior the model's own
        sec = segments_to_seconds(torch.from_numpy(r.segments), length, predictor.clips) + span[:, 0, None, None]
        grid = np.zeros((q, w, k, 2))
        grid[query, slot] = sec
        first = r.segments[:, 0]  # each pair's top answer, clips of its window
        at_cut = np.zeros((q, w), bool)
        at_cut[query, slot] = (((first[:, 0] == 0) & (span[:, 0] > 0))
                               | ((first[:, 1] == predictor.clips - 1) & (span[:, 1] < ends[window])))
        pick = merge(grid, match, valid, top_k, predictor.nms, at_cut if cuts else None, begin, spans, interleave)
        at_w, at_c = pick // k, pick % k
        rows = np.arange(q)[:, None]
        pair_of = np.full((q, w), -1, np.int64)
        pair_of[query, slot] = np.arange(len(query))
        pair = pair_of[rows, at_w]
        # a moment's score: its window's, capped by those ranked above it (windows take turns and
        # the cut rule reorders them, and the scores must not rise down a list ranked best first)
        results.append((grid[rows, at_w, at_c], np.minimum.accumulate(match[rows, at_w], axis=1),
                        r.segments[pair, at_c], window[pair]))
    (seconds, scores, segments, windows), plain = results[0], (results[1] if len(results) > 1 else None)
    if progress is not None:
        progress(q)
    changed = None
    if plain is not None:
        changed = ~np.isclose(plain[0][:, 0], seconds[:, 0]).all(1)
    predictions = Predictions(segments, scores.astype(np.float32), None, None, changed,
                              None if plain is None else Predictions(plain[2], plain[1].astype(np.float32), None))
    answers = Answers(predictions, seconds, False, predictor.nms, None if plain is None else plain[0],
                      predictor.span_prior.weight if plain is not None else None, long.seconds[windows])
    return answers, windows[:, 0]


# ----------------------------------------------------------------------------- the paths


def answer(predictor: Predictor, clips: np.ndarray, long: Long | None, is_long: np.ndarray,
           video: np.ndarray, durations: np.ndarray, texts: Sequence[str], top_k: int,
           progress: Callable[[int], None] | None = None) -> Answers:
    """Every query's answers: clips (V, N_v, D) the pooled videos (a long one's row unused),
    `long` the long videos' windows, is_long (V,). Without a long video asked about, exactly
    Predictor.answer."""
    features = torch.from_numpy(np.ascontiguousarray(clips, np.float32)).to(predictor.device)
    asks_long = is_long[video]
    if long is None or not asks_long.any():
        return predictor.answer(features, video, durations, texts, top_k, progress=progress)
    texts = list(texts)
    short = None
    if (~asks_long).any():
        short = predictor.answer(features, video[~asks_long], durations[~asks_long],
                                 [t for t, x in zip(texts, asks_long, strict=True) if not x], top_k, progress=progress)
    windowed, _ = answer_long(predictor, long, video[asks_long],
                              [t for t, x in zip(texts, asks_long, strict=True) if x], top_k, progress=progress)
    return combine(short, windowed, asks_long)


def ground(predictor: Predictor, rows: Sequence[np.ndarray], names: Sequence[str], seconds: Sequence[float],
           video: np.ndarray, durations: np.ndarray, texts: Sequence[str], top_k: int,
           progress: Callable[[int], None] | None = None, pooled: Sequence[bool] | None = None
           ) -> tuple[Answers, list[Grounding]]:
    """Predictor.ground for videos of any length: rows (T, D_in) of each video, its name and
    seconds; a long video's alignment map is its answering window's (a Grounding's segments
    are clips of that window, its moments the video's seconds). A video whose rows are its
    pooled clips (`pooled`, fsan export) is answered from them, as `fsan evaluate` does."""
    windowing = Windowing.of(predictor.data)
    pooled = pooled if pooled is not None else [False] * len(rows)
    rated = [i for i, p in enumerate(pooled) if not p]  # rows a second: pooled clips have none
    check_rates(predictor, [rows[i] for i in rated], [names[i] for i in rated], [seconds[i] for i in rated])
    check_pooled(predictor, windowing, [(len(rows[i]), names[i], float(seconds[i])) for i, p in enumerate(pooled) if p])
    is_long, long = cut(predictor, rows, seconds, names, windowing, pooled) if windowing else ([False] * len(rows), None)
    is_long = np.array(is_long, bool)
    shape = None
    pooled = []
    for x, name, far in zip(rows, names, is_long, strict=True):
        pooled.append(None if far else predictor.video_clips(x, name))
        shape = shape or (None if far else pooled[-1].shape)
    shape = shape or (predictor.clips, long.clips.shape[2])
    clips = np.stack([p if p is not None else np.zeros(shape, np.float32) for p in pooled])
    asks_long = is_long[video]
    if long is None or not asks_long.any():
        return predictor.ground(clips, video, durations, texts, top_k, progress)
    texts = list(texts)
    near = [t for t, x in zip(texts, asks_long, strict=True) if not x]
    far = [t for t, x in zip(texts, asks_long, strict=True) if x]
    short, found = None, []
    if near:
        short, found = predictor.ground(clips, video[~asks_long], durations[~asks_long], near, top_k, progress)
    windowed, top = answer_long(predictor, long, video[asks_long], far, top_k, progress=progress)
    span = long.seconds[top]
    _, maps = predictor.ground(long.clips, top, span[:, 1] - span[:, 0], far, top_k)
    for i, g in enumerate(maps):  # the window's map, the video's answers
        g.windowed = True
        g.segments = windowed.predictions.segments[i][:top_k]
        g.moments = windowed.seconds[i][:top_k]
        g.scores = windowed.predictions.scores[i][:top_k]
        if windowed.plain_seconds is not None and windowed.predictions.plain is not None:
            g.prior_changed = bool(windowed.predictions.changed[i])
            own = windowed.predictions.plain
            g.model_top = (own.segments[i][0], windowed.plain_seconds[i][0], float(own.scores[i][0]))
    order = iter(found), iter(maps)
    results = [next(order[int(x)]) for x in asks_long]
    return combine(short, windowed, asks_long), results


def long_in_store(windowing: Windowing | None, store: Any, queries: Sequence[Any]) -> tuple[list[int], list[int]]:
    """The store's videos asked about that are longer than the trained range, and those of them
    whose rows the store keeps (windowed; the others are answered from their pooled clips)."""
    if windowing is None:
        return [], []
    index, raw = store.video_index, getattr(store, "raw", None)
    asked = sorted({index[q.video] for q in queries if q.video in index})
    far = [v for v in asked if windowing.spans(int(store.videos[v].get("rows", 0)),
                                               float(store.videos[v]["duration"])) is not None]
    return far, [v for v in far if raw is not None and "raw_at" in store.videos[v]]


RATE_SLACK = 4.0  # a video's feature rows a second this far from the training videos' is said


def check_rates(predictor: Predictor, rows: Sequence[np.ndarray], names: Sequence[str],
                seconds: Sequence[float]) -> None:
    """Warn where a video's rows a second are far from those the model was trained on: its
    duration is probably wrong (times are read from it, and it decides what is windowed)."""
    try:
        trained = float(predictor.data["durations"]["rows_per_second"])
    except (TypeError, KeyError, ValueError):  # none recorded, or a damaged record: nothing to compare
        return
    if not math.isfinite(trained):
        return
    for x, name, d in zip(rows, names, seconds, strict=True):
        rate = len(x) / float(d) if float(d) > 0 else 0.0
        if trained > 0 and rate > 0 and not 1 / RATE_SLACK <= rate / trained <= RATE_SLACK:
            warn(f"{name} has {len(x)} feature rows for {float(d):g} s ({rate:.3g} a second), and the model was "
                 f"trained on {trained:.3g} {'row' if f'{trained:.3g}' == '1' else 'rows'} a second: check its duration (the file's 'duration' attribute or "
                 "--duration); answers are in seconds of it")


def _keep_rows_fix(store: Any, pooled: Sequence[int], checkpoint: Any = None) -> str:
    """How to have videos `pooled` read in windows: a store keeps the rows of the videos longer
    than its own train videos (data.store.long_videos); one that should have kept them is of an
    older fsan, and the others are within the range of its own train split."""
    train = [float(q.duration) for q in store.splits.get("train", [])]
    if not train or any(float(store.videos[v]["duration"]) > max(train) for v in pooled):
        return f"prepare the store again with this fsan to keep {'its' if len(pooled) == 1 else 'their'} rows"
    return (f"the store keeps the rows only of videos longer than its own train videos ({max(train):g} s); "
            "to read these in windows, ground them from their original features file, not an fsan export of "
            f"this store: fsan ground FILE --queries PAIRS.jsonl --checkpoint {checkpoint or 'CKPT'}")


def check_pooled(predictor: Predictor, windowing: Windowing | None, videos: Sequence[tuple[int, str, float]]) -> None:
    """Say where a video given as its pooled clips (fsan export: clips, name, seconds) is read
    otherwise than its rows would be: longer than the model's training videos (no windows from
    clips), or pooled to another number of clips than the model reads."""
    for clips, name, d in videos:
        if windowing is not None and d > windowing.longest_s:
            warn(f"'{name}' holds the video pooled to {clips} clips (fsan export), and at {d:g} s it is longer than "
                 f"{predictor.checkpoint or 'the model'} was trained on ({windowing.longest_s:g} s): answered from "
                 f"those clips, {d / clips:.3g} s each (ground its original features file to read it in windows)")
        if clips != predictor.clips:
            warn(f"'{name}' holds the video pooled to {clips} clips (fsan export), and the model reads "
                 f"{predictor.clips}: pooled again (export it from a store prepared with --clips {predictor.clips})")


def answer_split(predictor: Predictor, store: Any, queries: Sequence[Any], top_k: int) -> Answers:
    """Predictor.answer_split for a store that keeps the raw rows of its long videos
    (data.store: rows.npy, "raw_at"); a long video whose rows the store does not keep is
    answered from its pooled clips, as before, and said."""
    windowing = Windowing.of(predictor.data)
    if windowing is None or not queries:
        return predictor.answer_split(store, queries, top_k)
    far, kept = long_in_store(windowing, store, queries)
    predictor.check_split(store, queries)  # a store the model cannot read is said before any warning
    if len(kept) < len(far):
        n = len(far) - len(kept)
        warn(f"{counted(n, 'video')} {'is' if n == 1 else 'are'} longer than {predictor.checkpoint or 'the model'} "
             f"was trained on ({windowing.longest_s:g} s), and the store at {store.path} keeps only "
             f"{'its' if n == 1 else 'their'} pooled clips: answered from those "
             f"({_keep_rows_fix(store, sorted(set(far) - set(kept)), predictor.checkpoint)})")
    if not kept:
        return predictor.answer_split(store, queries, top_k, checked=True)
    clips = np.array(store.features, dtype=np.float32)
    normalize = bool(store.manifest.get("normalize", True))
    parts, owner, seconds = [], [], []
    for v in kept:  # the store's rows are already projected by its PCA
        meta = store.videos[v]
        x = store.kept_rows(v)
        spans = windowing.spans(len(x), float(meta["duration"]))
        parts += [video_clips(x[a:b], predictor.clips, pca=None, normalize=normalize) for a, b in spans]
        owner.append(np.full(len(spans), v, np.int64))
        seconds.append(spans * (float(meta["duration"]) / len(x)))
    long = Long(np.stack(parts), np.concatenate(owner), np.concatenate(seconds))
    is_long = np.zeros(len(store.videos), bool)
    is_long[kept] = True
    durations = np.array([q.duration for q in queries], np.float64)
    return answer(predictor, clips, long, is_long, video_rows(store, list(queries)), durations,
                  [q.query for q in queries], top_k)
