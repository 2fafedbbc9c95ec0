"""`prepare_dataset`: official annotation + feature files -> the prepared store (see store.py).

Each adapter module (activitynet, didemo, charades, custom) has `read_annotations(path, options)`
returning `Annotations`: the queries per split with times in seconds, each video's duration, the
HDF5 layout its feature file uses, and what was dropped or clipped. Everything after that is
shared here: choosing the videos, checking the feature file, the vocabulary, PCA, one streaming
pass over the features, and an atomic write.
"""

from __future__ import annotations

import importlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from fsan_cli.core.errors import FsanError
from fsan_cli.core.memory import check_fits
from fsan_cli.core.output import log, stderr_console
from fsan_cli.core.state import STATE
from fsan_cli.core.text import TOKENIZER, build_vocab, load_word_vectors, tokenize, vectors_record
from fsan_cli.data.annotations import (
    Annotations,
    annotated_videos,
    apply_limit,
    carve_val,
    drop_missing,
    has_times,
    md5sum,
    overlap_warnings,
)
from fsan_cli.data.feature_files import Located, read_features, scan_features
from fsan_cli.data.features import PcaFit, apply_pca, video_clips
from fsan_cli.data.store import SPLITS, long_videos, store_exists, write_store
from fsan_cli.video import record as extractor
from fsan_cli.video.h5file import TRUNCATED

ADAPTERS = ("activitynet", "didemo", "charades", "custom")
CONVENTIONS = ("clip", "drop")
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass
class PrepareOptions:
    dataset: str
    annotations: Path
    features: Path
    out: Path
    clips: int
    normalize: bool = True
    pca: int = 0  # 0: off
    glove: str | None = None
    skip_missing: bool = False
    charades_convention: str = "clip"
    limit_videos: int | None = None
    val_share: float = 0.1  # of train videos held out as val when the benchmark has none
    overwrite: bool = False
    progress: bool = True


# --------------------------------------------------------------------------------------------


def _check_out(opts: PrepareOptions) -> None:
    out = Path(opts.out)
    if store_exists(out):
        if not opts.overwrite:
            raise FsanError(
                f"a prepared store already exists at {out}",
                "Pass --overwrite to replace it, or --out DIR to write elsewhere",
            )
    elif out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise FsanError(
            f"{out} exists and is not a prepared store; prepare never replaces other files",
            "Pass --out with a new or empty folder",
        )


def _missing(ann: Annotations, scan, opts: PrepareOptions, warnings: list[str]) -> dict[str, Any]:
    absent = scan.missing + scan.empty
    info = {"count": len(absent), "empty": len(scan.empty), "first": absent[:5]}
    if not absent:
        return info
    shown = ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else "")
    what = f"{len(absent)} of {len(absent) + len(scan.found)} annotated videos have no features in {opts.features}"
    if scan.empty:
        what += f" ({len(scan.empty)} of them with zero rows)"
    if not opts.skip_missing:
        raise FsanError(
            f"{what}: {shown}",
            "Pass --skip-missing to prepare without them (their queries are dropped and counted), "
            "or use a complete feature file",
        )
    drop_missing(ann, set(absent))
    warnings.append(f"{what}: {shown}. Their queries were dropped (--skip-missing).")
    return info


def _vocabulary(
    ann: Annotations, glove: str | None
) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    texts = [q.query for q in ann.splits.get("train", [])]
    if not texts or not has_times(ann):  # without a train split or times: all its sentences' words
        texts = [q.query for qs in ann.splits.values() for q in qs]
    needed = {w for t in texts for w in tokenize(t, TOKENIZER)}
    vectors = load_word_vectors(glove, needed=needed)
    vocab, matrix, stats = build_vocab(texts, vectors, TOKENIZER)
    known = set(vocab)
    unk: dict[str, float] = {}
    for name, queries in ann.splits.items():
        tokens = [w for q in queries for w in tokenize(q.query, TOKENIZER)]
        unk[name] = round(100.0 * sum(w not in known for w in tokens) / max(len(tokens), 1), 2)
    info = {
        "source": vectors.source,
        "dim": vectors.dim,
        "vocab": len(vocab),
        "oov_rate": round(stats["oov_rate"], 2),
        "oov_types": int(stats["oov_types"]),
        "unk_rate": unk,
    }
    return vocab, matrix, info


def _progress(enabled: bool):
    console = stderr_console()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled or STATE.quiet or not console.is_terminal,
        transient=True,
    )


def _fit_pca(opts: PrepareOptions, ann: Annotations, locs: dict[str, Located], dim_in: int):
    train = {q.video for q in ann.splits.get("train", [])} or set(locs)
    fit_locs = [locs[v] for v in train if v in locs]
    fit = PcaFit(dim_in)
    total = sum(loc.rows * loc.dim * loc.dtype.itemsize for loc in fit_locs)
    log(f"Fitting PCA to {opts.pca} dims on {len(fit_locs)} videos ({total / 1e6:,.0f} MB)")
    with _progress(opts.progress) as bar:
        task = bar.add_task(f"PCA fit ({len(fit_locs)} videos)", total=total)
        for _, rows in read_features(opts.features, fit_locs):
            fit.add(rows)
            bar.advance(task, rows.nbytes)
    pca = fit.fit(opts.pca)
    info = {
        "dim_in": dim_in,
        "dim_out": opts.pca,
        "fit_split": "train" if ann.splits.get("train") else "all",
        "fit_rows": fit.count,
        "explained_variance": round(float(pca["explained_variance_ratio"].sum()), 4),
    }
    return pca, info, total


def _stream(opts, videos: list[str], locs: dict[str, Located], pca, dim_out: int, keep: frozenset = frozenset()):
    """One pass over the feature file: (n_videos, clips, dim_out) float32 and repair counts; the
    rows (PCA'd, non-finite ones zero) of the videos in `keep`, {video: (T, dim_out)}."""
    index = {v: i for i, v in enumerate(videos)}
    features = np.zeros((len(videos), opts.clips, dim_out), np.float32)
    total = sum(loc.rows * loc.dim * loc.dtype.itemsize for loc in locs.values())
    log(f"Reading {len(videos)} videos ({total / 1e6:,.0f} MB) from {opts.features}")
    bad_videos: list[str] = []
    bad_rows = 0
    kept: dict[str, np.ndarray] = {}
    with _progress(opts.progress) as bar:
        task = bar.add_task(f"Reading {len(videos)} videos", total=total)
        for loc, rows in read_features(opts.features, list(locs.values())):
            with np.errstate(invalid="ignore", over="ignore"):
                out = video_clips(rows, opts.clips, pca=pca, normalize=opts.normalize)
            if not np.isfinite(out).all():  # NaN/inf reach at least one pooled bin
                finite = np.isfinite(rows).all(axis=1)
                bad_rows += int((~finite).sum())
                bad_videos.append(loc.video)
                rows = np.where(finite[:, None], rows, 0).astype(np.float32)
                out = video_clips(rows, opts.clips, pca=pca, normalize=opts.normalize)
            features[index[loc.video]] = out
            if loc.video in keep:
                kept[loc.video] = (apply_pca(rows, pca) if pca is not None else rows).astype(np.float32)
            bar.advance(task, rows.nbytes)
    return features, total, {"videos": len(bad_videos), "rows": bad_rows, "first": bad_videos[:5]}, kept


def _check_memory(opts: PrepareOptions, locs: dict[str, Located], dim_in: int) -> None:
    """From the HDF5 metadata, before any long read: the largest video's matrix and the pooled
    features of all fit in the free RAM."""
    big = max(locs.values(), key=lambda loc: loc.rows * loc.dim * loc.dtype.itemsize)
    check_fits(big.rows * big.dim * big.dtype.itemsize,
               f"video {big.video} in {opts.features} ({big.rows:,} x {big.dim} {big.dtype})",
               "Check the feature file (its dimensions look wrong), or prepare on a machine with more memory")
    dim = opts.pca or dim_in
    check_fits(4 * len(locs) * opts.clips * dim,
               f"the prepared features ({len(locs):,} videos x {opts.clips} clips x {dim} dims)",
               "Prepare fewer videos (--limit-videos), clips (--clips) or dims (--pca), or on a machine "
               "with more memory")


def _load_adapter(name: str):
    if name not in ADAPTERS:
        raise FsanError(
            f"`fsan prepare` does not know dataset '{name}'",
            f"Use one of: {', '.join(ADAPTERS)} (synthetic data needs no prepare)",
        )
    return importlib.import_module(f"fsan_cli.data.{name}")


def _validate(opts: PrepareOptions) -> None:
    if opts.clips < 1:
        raise FsanError(
            f"--clips must be at least 1, got {opts.clips}", "Pass --clips N with N >= 1"
        )
    if opts.pca < 0:
        raise FsanError(f"--pca must be 0 (off) or positive, got {opts.pca}", "Pass --pca N")
    if opts.limit_videos is not None and opts.limit_videos < 1:
        raise FsanError(
            f"--limit-videos must be at least 1, got {opts.limit_videos}", "Pass --limit-videos N"
        )
    if not 0 <= opts.val_share < 1:
        raise FsanError(
            f"--val-share must be in [0, 1), got {opts.val_share:g}",
            "Pass a fraction such as 0.1, or 0 to keep train whole",
        )
    if opts.charades_convention not in CONVENTIONS:
        raise FsanError(
            f"unknown --charades-convention '{opts.charades_convention}'",
            f"Use one of: {', '.join(CONVENTIONS)}",
        )
    if not Path(opts.annotations).exists():
        raise FsanError(f"--annotations {opts.annotations} does not exist", "Check the path")
    if not Path(opts.features).is_file():
        raise FsanError(
            f"--features {opts.features} does not exist or is not a file",
            "Pass the HDF5 feature file (see docs/datasets.md for where to get it)",
        )


def _read(opts: PrepareOptions) -> Annotations:
    """The adapter's annotations, splits in the canonical order, cut by --limit-videos."""
    adapter = _load_adapter(opts.dataset)
    _validate(opts)
    _check_out(opts)
    ann: Annotations = adapter.read_annotations(Path(opts.annotations), opts)
    order = [s for s in SPLITS if s in ann.splits] + [s for s in ann.splits if s not in SPLITS]
    ann.splits = {name: ann.splits[name] for name in order}
    for name in ann.splits:
        if not _SPLIT_NAME.match(name):
            raise FsanError(
                f"split name '{name}' is not a plain name", "Use letters, digits, '_' or '-'"
            )
    if opts.limit_videos is not None:
        apply_limit(ann, opts.limit_videos)
    if opts.val_share > 0 and "val" not in ann.splits and ann.splits.get("train"):
        carve_val(ann, opts.val_share)
    return ann


def prepare_dataset(opts: PrepareOptions) -> dict[str, Any]:
    """Run the adapter of `opts.dataset` and write the store at `opts.out`; returns the summary."""
    seconds: dict[str, float] = {}
    mark = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        seconds[name] = round(now - mark[0], 2)
        mark[0] = now

    ann = _read(opts)
    lap("annotations")
    warnings = overlap_warnings(ann)
    scan = scan_features(Path(opts.features), annotated_videos(ann), ann.layout)
    missing = _missing(ann, scan, opts, warnings)
    videos = annotated_videos(ann)
    if not videos:
        why = "; ".join(f"{n} {s}: {r}" for (s, r), n in sorted(ann.dropped.items()) if n)
        raise FsanError("no queries are left to prepare" + (f" (dropped {why})" if why else ""),
                        "Check the annotation and feature files")
    locs = {v: scan.found[v] for v in videos}
    dim_in = next(iter(locs.values())).dim
    _check_memory(opts, locs, dim_in)
    warnings += _duration_differences(Path(opts.features), locs, ann)
    lap("scan")
    vocab, vectors, words = _vocabulary(ann, opts.glove)
    lap("vocabulary")
    pca, pca_info, read_bytes = None, None, 0
    if opts.pca:
        pca, pca_info, read_bytes = _fit_pca(opts, ann, locs, dim_in)
        lap("pca")
    features, stream_bytes, nonfinite, kept = _stream(opts, videos, locs, pca, opts.pca or dim_in,
                                                      long_videos(ann.splits, ann.durations, videos))
    lap("features")
    if nonfinite["videos"]:
        warnings.append(
            f"{nonfinite['rows']} feature rows with NaN or inf in {nonfinite['videos']} videos "
            f"(e.g. {', '.join(nonfinite['first'])}) were set to zero"
        )
    summary = _summary(opts, ann, videos, dim_in, words, missing, nonfinite, pca_info)
    summary["read_mb"] = round((read_bytes + stream_bytes) / 1e6, 1)
    summary["read_mb_per_s"] = round(stream_bytes / 1e6 / max(seconds["features"], 1e-2), 1)
    summary["warnings"] = warnings
    manifest = {
        "dataset": opts.dataset,
        "normalize": opts.normalize,
        "pca": pca_info,
        "word_vectors": vectors_record(opts.glove, vocab, vectors),
        "tokenizer": TOKENIZER,
        "extractor": extractor.of_datasets(Path(opts.features), [loc.path for loc in locs.values()]),
        "inputs": _inputs(opts, ann),
        "summary": summary,
    }
    video_rows = [{"video": v, "duration": ann.durations[v], "rows": locs[v].rows} for v in videos]
    write_store(Path(opts.out), manifest, features, video_rows, vocab, vectors, ann.splits, pca, raw=kept)
    lap("write")
    summary["seconds"] = {**seconds, "total": round(sum(seconds.values()), 2)}
    return summary


def _duration_differences(path: Path, locs: dict[str, Any], ann: Annotations) -> list[str]:
    """A warning where the features' `duration` attribute (fsan extract's: the seconds whose frames
    decode) and the annotation's differ by more than video.h5file.TRUNCATED (a truncated video
    file, or a wrong annotation); official feature files carry no duration."""
    off = []
    with h5py.File(path, "r") as h5:
        for video, loc in locs.items():
            try:
                seconds = float(np.asarray(h5[loc.path].attrs["duration"], np.float64).reshape(-1)[0])
            except (KeyError, TypeError, ValueError, IndexError):
                continue
            want = float(ann.durations[video])
            if np.isfinite(seconds) and abs(want - seconds) > max(TRUNCATED[0], TRUNCATED[1] * want):
                off.append(f"{video}: {want:g} s annotated, features of {seconds:g} s")
    if not off:
        return []
    return [f"{len(off)} videos do not last what their annotations say ({'; '.join(off[:3])}"
            f"{', ...' if len(off) > 3 else ''}): a truncated video file? Moments past the features' "
            "end fall on no frames; extract the whole video again, or correct the duration"]


def _inputs(opts: PrepareOptions, ann: Annotations) -> list[dict[str, Any]]:
    inputs = []
    for f in ann.files:
        inputs.append(
            {
                "role": "annotations",
                "path": str(Path(f).resolve()),
                "bytes": f.stat().st_size,
                "md5": md5sum(f),
            }
        )
    feat = Path(opts.features)
    stat = feat.stat()
    inputs.append(
        {
            "role": "features",
            "path": str(feat.resolve()),
            "bytes": stat.st_size,
            "mtime": int(stat.st_mtime),
        }
    )
    if opts.glove and Path(opts.glove).is_file():
        g = Path(opts.glove)
        inputs.append({"role": "word_vectors", "path": str(g.resolve()), "bytes": g.stat().st_size})
    else:
        inputs.append({"role": "word_vectors", "source": opts.glove or "glove-6b-50d"})
    return inputs


def _summary(opts, ann, videos, dim_in, words, missing, nonfinite, pca_info) -> dict[str, Any]:
    splits = {}
    for name in ann.splits:
        queries = ann.splits[name]
        splits[name] = {
            "read": ann.read.get(name, len(queries)),
            "queries": len(queries),
            "videos": len({q.video for q in queries}),
            "clipped": ann.clipped.get(name, 0),
        }
    dropped = [
        {"split": s, "reason": r, "count": n} for (s, r), n in sorted(ann.dropped.items()) if n
    ]
    return {
        "dataset": opts.dataset,
        "out": str(opts.out),
        "videos": len(videos),
        "splits": splits,
        "feature_dim_in": dim_in,
        "feature_dim": opts.pca or dim_in,
        "clips": opts.clips,
        "normalize": opts.normalize,
        "pca": pca_info,
        "limit_videos": opts.limit_videos,
        "word_vectors": words,
        "oov_rate": words["oov_rate"],
        "dropped": dropped,
        "missing_videos": missing,
        "nonfinite": nonfinite,
        "notes": ann.notes,
    }

