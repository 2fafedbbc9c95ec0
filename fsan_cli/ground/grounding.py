"""Ground sentences in videos: read the features of every video asked about, their durations,
and answer all the queries at once with the Predictor.

The library side of `fsan ground` (the command only parses options and calls these):

- `read_videos`: videos' (T, D) features and durations from one HDF5 file, in our layout
  (dataset `features`, attribute `duration`) or the official ones (a group per video holding
  `c3d_features`; a single (T, D) dataset per video).
- `durations`: each video's seconds: the query line's, --duration, the file's attribute, the
  prepared store's (official feature files carry none), or DiDeMo's 30 s.
- `ground`: every query answered by the one `Predictor` (fsan_cli/predict/predictor.py) that `fsan
  evaluate` uses too, batched across videos (a video longer than the model was trained on: in
  windows, fsan_cli/predict/windows.py, its map the answering window's); each answer with its predictions JSONL line (plus
  the alignment map and the line's own fields). The table, heatmap and figure are in
  fsan_cli/ground/render.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fsan_cli.core.errors import FsanError, regular_file
from fsan_cli.core.memory import check_fits
from fsan_cli.core.output import count_progress, counted, log, warn
from fsan_cli.core.text import TOKENIZER, UNK, tokenize
from fsan_cli.data.feature_files import feature_matrix, video_keys
from fsan_cli.data.store import load_store, store_exists
from fsan_cli.ground.requests import Request
from fsan_cli.predict import windows
from fsan_cli.predict.answers import Grounding
from fsan_cli.predict.predictor import Predictor
from fsan_cli.video import record as extractor
from fsan_cli.video.h5file import LAYOUT_ATTR, PER_VIDEO, POOLED

MEMBERS = ("c3d_features", "features")  # a video's matrix inside its group (ActivityNet, ours)
PROGRESS_FROM = 256  # queries: fewer take about a second at the paper config on a CPU
DIDEMO_SECONDS = 30.0  # DiDeMo's six 5-second chunks: its features carry no duration
LAYOUT_HELP = (
    "Pass an HDF5 file with a (T, D) dataset `features` and an attribute `duration` (seconds), "
    "or an official feature file with --video-id"
)


# ----------------------------------------------------------------------------- inputs


@dataclass
class Video:
    video: str
    rows: np.ndarray  # (T, D) as stored
    duration: float | None  # seconds; None when the file has none
    where: str  # file and dataset path, for messages
    record: dict[str, Any] | None = None  # the extractor's (fsan_cli/video/record.py); None: none
    pooled: bool | None = False  # the rows are the whole video pooled to clips (fsan export): never windowed; None: an older export's, `pooled`


def read_videos(path: Path, ids: Sequence[str | None]) -> dict[str | None, Video]:
    """The features of each video id (None: the file's only video) in `path`, read in one
    opening of the file; errors name the layout that was expected."""

    path = Path(path)
    regular_file(path, "video file", "Pass the path of a video file or of an HDF5 feature file")
    if not h5py.is_hdf5(path):
        raise FsanError(f"{path} is not an HDF5 file", LAYOUT_HELP)
    try:
        with h5py.File(path, "r") as h5:
            named = [v for v in dict.fromkeys(ids) if v is not None]
            if _one_video(h5) and len(named) > 1:
                raise FsanError(f"{path} holds one video, and the queries name {len(named)} "
                                f"({', '.join(named[:3])}{', ...' if len(named) > 3 else ''})",
                                "Ground each video with its own file, or use a multi-video file")
            read: dict[str, Video] = {}  # by dataset: each read (and said) once
            return {vid: _read_one(h5, path, vid, read) for vid in dict.fromkeys(ids)}
    except OSError as exc:
        raise FsanError(f"{path} cannot be read as HDF5 ({exc})", LAYOUT_HELP) from None


def _read_one(h5, path: Path, video_id: str | None, read: dict[str, Video] | None = None) -> Video:
    ds, vid, single = _pick(h5, path, video_id)
    if read is not None and ds.name in read:
        return read[ds.name]
    where = f"{path}:{ds.name}"
    if ds.shape[0] == 0:
        raise FsanError(f"video '{vid}' in {where} has no feature rows (T = 0)",
                        "Extract features for at least one clip of the video")
    check_fits(int(np.prod(ds.shape)) * ds.dtype.itemsize, f"video '{vid}' in {where} holds {ds.shape} values",
               "Ground it on a machine with more free RAM, or extract fewer rows per video")
    record = extractor.from_attrs(ds.attrs, where)
    rows = ds[()]
    video = Video(vid, rows, _duration(ds, h5 if single else None, where), where, record,
                  _pooled(ds, h5, len(rows), where))
    if read is not None:
        read[ds.name] = video
    return video


def _pooled(ds, h5, rows: int, where: str) -> bool | None:
    """Whether the rows are the whole video pooled to clips by `fsan export` (answered from them,
    never windowed): its `pooled_clips` attribute gives their number (0: the store's rows of a
    long video). An export of an older fsan, which wrote pooled clips only, has none, and its
    file names the `store` it came from: None, pooled where it holds as many rows as the model
    reads clips (`pooled`). A mark that is not the row count is said, and not believed."""
    if POOLED not in ds.attrs:
        return None if "store" in h5.attrs and "dataset" in h5.attrs and _one_video(h5) else False
    mark = ds.attrs[POOLED]
    if isinstance(mark, np.integer | int) and not isinstance(mark, bool | np.bool_) and int(mark) in (0, rows):
        return int(mark) == rows
    shown = mark.tolist() if isinstance(mark, np.ndarray | np.generic) else mark
    warn(f"{where} says its rows are the video pooled to {shown!r} clips ({POOLED}), and it holds {rows} rows: "
         "read as feature rows (remove the attribute, or export the video again)")
    return False


def pooled(video: Video, clips: int) -> bool:
    """Whether `video`'s rows are its pooled clips, for a model that reads `clips` clips."""
    return video.rows.shape[0] == clips if video.pooled is None else video.pooled


def _one_video(h5) -> bool:
    """Whether the file is in the one-video layout (a dataset `features`), and not a file of one
    dataset per video that holds a video named `features`: `fsan extract` marks its files so;
    in an older one, another dataset carries an extractor record."""
    if not isinstance(h5.get("features"), h5py.Dataset):
        return False
    if _text_attr(h5.attrs.get(LAYOUT_ATTR)) == PER_VIDEO:
        return False
    return not any(k != "features" and isinstance(h5.get(k), h5py.Dataset) and "extractor" in h5[k].attrs
                   for k in h5)


def _pick(h5, path: Path, video_id: str | None):
    """(dataset, video id, whether the file holds only this video)."""
    if _one_video(h5):  # our layout: one video per file
        own = _text_attr(h5.attrs.get("video"))
        if video_id is not None and own is not None and own not in video_keys(video_id):
            raise FsanError(f"video '{video_id}' is not in {path}: it holds the one video '{own}'",
                            f"Name '{own}', or ground '{video_id}' with its own file")
        label = video_id or own or path.stem
        return _matrix(h5["features"], path), label, True
    keys = list(h5.keys())
    if video_id is not None:
        for key in video_keys(video_id):
            if key in h5:
                return _matrix(h5[key], path), key, len(keys) == 1
        raise FsanError(
            f"video '{video_id}' is not in {path} ({len(keys)} videos there)",
            f"Pass --video-id with one of its keys, e.g. {', '.join(keys[:3]) or '(none)'}",
        )
    if not keys:
        raise FsanError(f"{path} holds no datasets", LAYOUT_HELP)
    if len(keys) > 1:
        raise FsanError(
            f"{path} holds {len(keys)} videos",
            f"Pass --video-id to pick one, e.g. --video-id {keys[0]}",
        )
    return _matrix(h5[keys[0]], path), keys[0], True


def _matrix(obj, path: Path):
    """The (T, D) numeric dataset `obj` is, or holds."""
    return feature_matrix(obj, str(path), "one (T, D) feature matrix per video", LAYOUT_HELP, MEMBERS)


def _text_attr(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _duration(ds, root, where: str) -> float | None:
    """The `duration` attribute of the dataset, its group, or (one video per file) the file."""
    holders = [ds]
    if ds.parent.name != "/":
        holders.append(ds.parent)
    if root is not None:
        holders.append(root)
    for obj in holders:
        if "duration" in obj.attrs:
            raw = obj.attrs["duration"]
            try:
                if np.asarray(raw).dtype.kind == "b":  # h5py gives a boolean as numpy's: float() reads it as 1 s
                    raise TypeError
                (seconds,) = np.asarray(raw, dtype=np.float64).reshape(-1)  # a number, or an array of one
                return float(seconds)
            except (TypeError, ValueError):
                holder = f"{where[: len(where) - len(ds.name)]}{obj.name}"  # where is FILE:DATASET
                raise FsanError(
                    f"the duration attribute of {holder} is "
                    f"{raw.tolist() if isinstance(raw, np.ndarray | np.generic) else raw!r}, not a number of seconds",
                    "Fix the attribute, or pass --duration SECONDS",
                ) from None
    return None


def durations(videos: dict[str | None, Video], requests: Sequence[Request], keys: Sequence[str | None],
              flag: float | None, dataset: str | None, data_dir: Path) -> dict[str | None, float]:
    """Each video's seconds: its query lines' "duration", else --duration (one video only), else
    the file's attribute, else the prepared store of `dataset` under `data_dir`, else DiDeMo's
    30 s; positive and finite."""
    if flag is not None and len(videos) > 1:
        raise FsanError(f"--duration gives one length, and the queries ask about {len(videos)} videos",
                        'Give each JSON line its own "duration", or ground one video at a time')
    asked: dict[str | None, set[float]] = {}
    for r, key in zip(requests, keys, strict=True):
        if r.duration is not None:
            asked.setdefault(key, set()).add(r.duration)
    store: dict[str, float] | None = None
    out = {}
    for key, video in videos.items():
        given = asked.get(key, set())
        if len(given) > 1:
            raise FsanError(f"the query lines give video '{video.video}' {len(given)} durations "
                            f"({', '.join(f'{d:g}' for d in sorted(given))})", "Give one")
        seconds = next(iter(given)) if given else flag
        if seconds is not None and video.duration is not None and abs(seconds - video.duration) > 1e-3:
            warn(f"a duration of {seconds:g} s replaces the file's {video.duration:g} s for '{video.video}'")
        seconds = seconds if seconds is not None else video.duration
        if seconds is None and dataset is not None:
            store = _store_durations(dataset, data_dir) if store is None else store
            seconds = next((store[a] for a in video_keys(video.video) if a in store), None)
        if seconds is None and dataset == "didemo":
            seconds = DIDEMO_SECONDS
        if seconds is None:
            where = f", nor does the prepared store {Path(data_dir) / dataset} know it" if dataset else ""
            raise FsanError(f"{video.where} has no duration attribute{where}",
                            "Pass --duration SECONDS (the video's length), or --dataset and "
                            "--data-dir of a prepared store that holds the video")
        if not (math.isfinite(seconds) and seconds > 0):
            raise FsanError(f"the duration of video '{video.video}' is {seconds:g} s",
                            "It must be positive and finite; pass --duration SECONDS")
        out[key] = float(seconds)
    return out


def _store_durations(dataset: str, data_dir: Path) -> dict[str, float]:
    """{video: seconds} of a prepared store, or {} where there is none."""
    path = Path(data_dir) / dataset
    if not store_exists(path):
        return {}
    found = {str(v["video"]): float(v["duration"]) for v in load_store(path, mmap=True).videos}
    log(f"Durations of videos without one from the prepared store {path}")
    return found


def check_queries(predictor: Predictor, requests: Sequence[Request]) -> None:
    """Each query has a word the model knows; say where the model reads only the first words.
    Words outside the vocabulary are looked up in its word vectors first (Predictor.extend)."""
    predictor.extend([r.query for r in requests])
    for r in requests:
        words = tokenize(r.query, predictor.tokenizer)
        if len(words) > predictor.max_tokens:
            warn(f"{r.where} has {len(words)} words; the model reads the first {predictor.max_tokens}")
        read = predictor.tokens(r.query)
        if all(w not in predictor.word_to_id for w in read):
            raise FsanError(
                f"{r.where} ({r.query!r}) has no word the model knows (unknown: {', '.join(read)})",
                f"Rephrase it with common words; the checkpoint knows {len(predictor.vocab) - 2} words",
            )


@dataclass
class Grounded:
    """One query's answer: its video, the video's seconds, the moments and map, its line."""

    video: str
    duration: float
    grounding: Grounding
    row: dict[str, Any]  # predictions JSONL line + alignment_map + the request's own fields


def read_asked(path: Path, requests: Sequence[Request], video_id: str | None = None
               ) -> tuple[dict[str | None, Video], list[str | None]]:
    """Every video the requests name (a line's "video", else --video-id, else the file's only
    one), and each request's key into them."""
    keys = [r.video if r.video is not None else video_id for r in requests]
    videos = read_videos(path, [*keys, video_id] if video_id is not None else keys)  # checks --video-id
    first: dict[int, str | None] = {}  # a video named by its id and by the file's only one is one video
    for k, v in videos.items():
        first.setdefault(id(v), k)
    keys = [first[id(videos[k])] for k in keys]
    return {k: videos[k] for k in dict.fromkeys(keys)}, keys


def ground(predictor: Predictor, videos: dict[str | None, Video], keys: Sequence[str | None],
           requests: Sequence[Request], top_k: int, duration: float | None = None,
           dataset: str | None = None, data_dir: Path = Path("data")) -> list[Grounded]:
    """Prepare each video once and answer all queries in batches across videos; `dataset`
    (default: the checkpoint's) names the prepared store that knows durations."""
    check_queries(predictor, requests)
    for video in videos.values():
        check_extractor(predictor, video.record, f"{video.where} holds")
    dataset = dataset or predictor.dataset
    seconds = durations(videos, requests, keys, duration, dataset, data_dir)
    order = list(videos)  # the videos' rows in `clips`
    row_of_key = {k: i for i, k in enumerate(order)}
    index = np.array([row_of_key[k] for k in keys], np.int64)
    per_query = np.array([seconds[k] for k in keys], np.float64)
    t0 = time.perf_counter()
    with count_progress(len(requests), "Grounding", enabled=len(requests) > PROGRESS_FROM) as advance:
        answers, results = windows.ground(predictor, [videos[k].rows for k in order], [videos[k].video for k in order],
                                          [seconds[k] for k in order], index, per_query,
                                          [r.query for r in requests], top_k, advance,
                                          pooled=[pooled(videos[k], predictor.clips) for k in order])
    rate = len(results) / max(time.perf_counter() - t0, 1e-9)
    _say_what_was_read(predictor, [videos[k] for k in order], [seconds[k] for k in order], results, rate)
    out = []
    for i, (r, key, g) in enumerate(zip(requests, keys, results, strict=True)):
        video = videos[key].video if r.video is None else r.video
        row = answers.row(i, video, r.query, seconds[key], top_k)
        row["alignment_map"] = {
            "tokens": g.tokens,
            "clips": int(g.alignment_map.shape[1]),
            "values": np.round(g.alignment_map.astype(np.float64), 4).tolist(),
        }
        if g.score_map is not None and g.sc_map != "p":  # what the segment scores read
            row["score_map"] = {"kind": g.sc_map,
                                "values": np.round(g.score_map.astype(np.float64), 4).tolist()}
        out.append(Grounded(video, seconds[key], g, {**row, **r.extra}))
    return out


def check_extractor(predictor: Predictor, record: dict[str, Any] | None, what: str) -> None:
    """Features of another extractor than the checkpoint's are refused, naming both, as `fsan
    ground VIDEO` and `fsan extract` refuse them (where either side records none, nothing is
    known to differ)."""
    if record is not None and predictor.extractor is not None and not extractor.same(record, predictor.extractor):
        raise FsanError(f"{what} {extractor.describe(record)}, and "
                        f"{f'the checkpoint {predictor.checkpoint}' if predictor.checkpoint else 'the model'} was trained on {extractor.describe(predictor.extractor)}",
                        "Extract the features with the checkpoint's weights and --fps (fsan extract "
                        "--weights DIR), or use a checkpoint trained on these features")


def _say_what_was_read(predictor: Predictor, videos: list[Video], seconds: list[float],
                       results: Sequence[Grounding], rate: float) -> None:
    per_s = f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"  # not "0/s" for one slow query
    what = f"{counted(len(results), 'query', 'queries')} ({per_s}/s, {predictor.precision})"
    windowing = windows.Windowing.of(predictor.data)
    spans = [windowing.spans(v.rows.shape[0], s) if windowing and not pooled(v, predictor.clips) else None
             for v, s in zip(videos, seconds, strict=True)]
    widths = [float((w[0, 1] - w[0, 0]) * s / v.rows.shape[0])  # a window's seconds, as cut (whole rows)
              for v, s, w in zip(videos, seconds, spans, strict=True) if w is not None]
    if len(videos) == 1:
        v = videos[0]
        read = (f"{predictor.clips} clips" if spans[0] is None else f"read in {counted(len(spans[0]), 'window')} of "
                f"{widths[0]:.0f} s, {predictor.clips} clips each (longer than the model's training videos)")
        log(f"Video '{v.video}': {v.rows.shape[0]} rows of {v.rows.shape[1]}-d, {seconds[0]:g} s, {read}; {what}")
    else:
        read = ""
        if widths:
            size = f"{widths[0]:.0f} s" if round(min(widths)) == round(max(widths)) else f"{min(widths):.0f}-{max(widths):.0f} s"
            read = (f" ({len(widths)} longer than the model's training videos, read in "
                    f"{counted(sum(len(w) for w in spans if w is not None), 'window')} of {size})")
        log(f"{len(videos)} videos, {predictor.clips} clips each{read}; {what}")
    unknown = sorted({w for r in results for w in r.unknown})
    if unknown:
        whole = [w for w in unknown if predictor.tokenizer < TOKENIZER and tokenize(w) != [w]]
        warn(f"not in the model's vocabulary, read as {UNK}: {', '.join(unknown[:20])}"
             + (f" (\"{whole[0]}\" and the like are one word to the tokenizer of this checkpoint, of an "
                "older fsan; prepare the data and train again with this fsan to split them as "
                "GloVe does)" if whole else ""))
