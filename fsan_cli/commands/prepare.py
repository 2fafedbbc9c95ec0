"""`fsan prepare`: official annotation and feature files -> the prepared store under data/<dataset>."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from fsan_cli.commands.extract import WeightsOpt
from fsan_cli.commands.options import DataDirOpt, JsonOpt
from fsan_cli.core.errors import FsanError, UsageError, handle_errors
from fsan_cli.core.output import fmt, make_table, print_json, stdout_console, warn
from fsan_cli.core.settings import load_settings


class Dataset(StrEnum):
    activitynet = "activitynet"
    didemo = "didemo"
    charades = "charades"
    custom = "custom"


class Convention(StrEnum):
    clip = "clip"
    drop = "drop"


@handle_errors
def prepare(
    dataset: Annotated[
        Dataset, typer.Option("--dataset", "-d", metavar="NAME", help="Which benchmark's files these are: activitynet, didemo, charades or custom.")
    ],
    annotations: Annotated[
        Path,
        typer.Option(
            "--annotations", help="Folder of the official annotation files (custom: FILE.jsonl)."
        ),
    ],
    features: Annotated[
        Path | None,
        typer.Option("--features", help="The HDF5 feature file (with --videos: the one to extract into, "
                     "default DATA_DIR/custom-features.h5)."),
    ] = None,
    videos: Annotated[
        list[Path] | None,
        typer.Option("--videos", metavar="DIR", help="custom: first extract CLIP features of these video "
                     "files or folders into --features, as `fsan extract` does (repeatable)."),
    ] = None,
    weights: WeightsOpt = None,
    data_dir: DataDirOpt = Path("data"),
    out: Annotated[Path | None, typer.Option("--out", help="Write the store here instead.")] = None,
    glove: Annotated[
        str | None,
        typer.Option(
            "--glove",
            metavar="PATH",
            help="Word vectors: GloVe .txt or word2vec .bin (default: GloVe 6B 50d from PyPI).",
        ),
    ] = None,
    clips: Annotated[
        int | None, typer.Option("--clips", help="N_v, clips per video (default: the preset's).")
    ] = None,
    normalize: Annotated[
        bool, typer.Option("--normalize/--no-normalize", help="L2-normalise each clip feature.")
    ] = True,
    pca: Annotated[
        int | None,
        typer.Option(
            "--pca", metavar="N", help="PCA to N dims fitted on train (didemo: 500; 0 off)."
        ),
    ] = None,
    skip_missing: Annotated[
        bool, typer.Option("--skip-missing", help="Go on without videos that have no features.")
    ] = False,
    charades_convention: Annotated[
        Convention,
        typer.Option(
            "--charades-convention",
            help="Lines ending after the video: clip (flag, split test_clean) or drop.",
        ),
    ] = Convention.clip,
    limit_videos: Annotated[
        int | None,
        typer.Option("--limit-videos", metavar="N", help="Only the first N videos of each split."),
    ] = None,
    val_share: Annotated[
        float,
        typer.Option(
            "--val-share",
            metavar="FRACTION",
            help="Share of train videos held out as val when the files have no val split "
            "(Charades-STA); 0 keeps train whole.",
        ),
    ] = 0.1,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing store.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Turn a benchmark's official annotation and feature files into the store `train` reads.

    Your own videos: --dataset custom --annotations FILE.jsonl --videos DIR extracts their CLIP
    features first (`fsan extract`; --weights for a local copy of the CLIP weights).

    Clips are pooled to N_v per video, optionally PCA'd and L2-normalised; the vocabulary comes
    from the train split. Layouts and sources: docs/datasets.md.
    """
    from fsan_cli.data.prepare import PrepareOptions, prepare_dataset
    from fsan_cli.data.store import clear_stale

    if videos:
        features = _extract(dataset, videos, features or data_dir / "custom-features.h5", weights)
    if features is None:
        raise UsageError("--features is missing", "Pass the HDF5 feature file, or (custom) --videos DIR")
    cfg = load_settings(dataset.value)
    opts = PrepareOptions(
        dataset=dataset.value,
        annotations=annotations,
        features=features,
        out=out if out is not None else data_dir / dataset.value,
        clips=clips if clips is not None else cfg.data.clips,
        normalize=normalize and cfg.data.normalize,
        pca=pca if pca is not None else (500 if dataset is Dataset.didemo else 0),
        glove=glove,
        skip_missing=skip_missing,
        charades_convention=charades_convention.value,
        limit_videos=limit_videos,
        val_share=val_share,
        overwrite=overwrite,
    )
    clear_stale(Path(opts.out))  # what a killed prepare into the same place left
    summary = prepare_dataset(opts)
    for message in summary["warnings"]:
        warn(message)
    if as_json:
        print_json(summary)
    else:
        stdout_console().print(_table(summary))


def _extract(dataset: Dataset, videos: list[Path], features: Path, weights: Path | None) -> Path:
    """`fsan extract VIDEOS --out FEATURES` with its defaults (resumable: videos already there
    are skipped); any video that fails stops prepare."""
    from fsan_cli.core.device import resolve_device
    from fsan_cli.core.state import STATE
    from fsan_cli.video.encode import DEFAULT_BATCH, DEFAULT_FPS, DEFAULT_MODEL
    from fsan_cli.video.extract import extract_files

    if dataset is not Dataset.custom:
        raise UsageError(f"--videos extracts features for --dataset custom, not {dataset.value}",
                        f"Pass the official feature file of {dataset.value} with --features")
    features.parent.mkdir(parents=True, exist_ok=True)
    summary = extract_files(videos, features, DEFAULT_MODEL, weights, DEFAULT_FPS, DEFAULT_BATCH,
                            resolve_device(STATE.device))
    if summary["failed"]:
        first = summary["failed"][0]
        raise FsanError(f"{len(summary['failed'])} videos could not be read; the first: {first['reason']}",
                        f"Fix or remove them and run again (the others are kept in {features})")
    return features


def _table(s: dict[str, Any]):
    rows = [
        (name, sp["videos"], sp["read"], sp["queries"], sp["clipped"])
        for name, sp in s["splits"].items()
    ]
    words = s["word_vectors"]
    pca = s["pca"]
    lines = [
        f"{s['videos']} videos, N_v = {s['clips']}, feature dim {s['feature_dim_in']}"
        + (
            f" -> {s['feature_dim']} (PCA, {fmt(100 * pca['explained_variance'], 1)}% variance)"
            if pca
            else ""
        )
        + (", L2-normalised" if s["normalize"] else ""),
        f"vocabulary {words['vocab']} words ({words['source']}, {words['dim']}-d); "
        f"OOV {fmt(words['oov_rate'])}% of train tokens",
    ]
    lines += [f"dropped {d['count']} {d['split']}: {d['reason']}" for d in s["dropped"]]
    lines += s["notes"]
    lines.append(
        f"read {fmt(s['read_mb'], 1)} MB at {fmt(s['read_mb_per_s'], 1)} MB/s, "
        f"{fmt(s['seconds']['total'], 1)} s in all; wrote {s['out']}"
    )
    return make_table(
        f"Prepared {s['dataset']}",
        ["split", "videos", "queries read", "queries kept", "times clipped"],
        rows,
        caption="\n".join(lines),
    )
