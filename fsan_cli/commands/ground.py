"""`fsan ground`: ground sentences in one video, as a table and heatmap or as JSON lines."""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from fsan_cli.commands.extract import WeightsOpt
from fsan_cli.commands.options import CheckpointOpt, DataDirOpt, JsonLinesOpt, SpanPriorOpt, TopKOpt
from fsan_cli.core.errors import FsanError, handle_errors


class Precision(StrEnum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


@handle_errors
def ground(
    video: Annotated[Path, typer.Argument(metavar="VIDEO", help="The videos' clip features (.h5), or a video file.")],
    queries: Annotated[
        list[str] | None,
        typer.Argument(metavar="QUERY", help="Sentences; '-' reads one per line (text or JSON) from stdin."),
    ] = None,
    queries_file: Annotated[
        Path | None,
        typer.Option("--queries", metavar="FILE.jsonl",
                     help='Ground these lines too: {"video": ..., "query": ..., any other fields}.'),
    ] = None,
    checkpoint: CheckpointOpt = None,
    video_id: Annotated[
        str | None, typer.Option("--video-id", metavar="ID", help="Which video of a multi-video file.")
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option("--duration", help="Video length in seconds, if the file has none."),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", "-d", metavar="NAME",
                     help="Prepared store whose durations to use where the file has none "
                     "(default: the checkpoint's dataset)."),
    ] = None,
    data_dir: DataDirOpt = Path("data"),
    top_k: TopKOpt = 5,
    span_prior: SpanPriorOpt = True,
    as_json: JsonLinesOpt = False,
    precision: Annotated[
        Precision,
        typer.Option(
            "--precision",
            help="Model arithmetic. auto: bf16 on CUDA and on CPUs with AMX (2-4x faster; "
            "moments can differ slightly), else fp32. fp32 matches `fsan evaluate` exactly.",
        ),
    ] = Precision.auto,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", metavar="FILE.png", help="Also save the figure (needs matplotlib)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Let --plot replace an existing file.")] = False,
    weights: WeightsOpt = None,
) -> None:
    """Find the moments of VIDEO that QUERY describes: top-k (start, end, score) and the
    word-by-clip alignment map (paper Figure 3).

    VIDEO is an HDF5 file holding a (T, D) dataset `features` and an attribute `duration`
    (seconds), an official feature file (a group per video holding `c3d_features`, or a (T, D)
    dataset per video), a file of `fsan extract`, or a video file (.mp4, .mkv, ...): its
    features are extracted as the checkpoint's training features were (the extractor recorded
    in it; --weights for a local copy of its weights) and cached in
    $XDG_CACHE_HOME/fsan/features (~/.cache/fsan/features). A query line may be plain text or a
    JSON object: its "video" picks a video of the file (else --video-id), its "duration" gives
    that video's seconds, and every other field (e.g. annotation_id) is copied into its output
    line. Videos without a duration take it
    from the prepared store (--dataset, --data-dir). Features are pooled, normalised and
    projected as at training time. Without --checkpoint, the newest runs/*/best.pt answers.
    The map drawn is the one the segment scores read (P centred, by default); --plot saves it as
    a figure, one colour scale for all queries, the answer boxed (a query line's "times" too, as
    the ground truth). With the checkpoint's span prior (`fsan train` chose its weight on val), a
    segment's score is SC + w log p(s, e), and an answer the prior moved is marked, with the
    model's own beside it. --json prints one line per query: the predictions format plus its
    alignment_map, score_map and span_prior. Examples:

        fsan ground v.h5 - --json < q.txt | fsan evaluate --predictions -
        fsan ground feats.hdf5 --queries pairs.jsonl --json > predictions.jsonl
    """
    from fsan_cli.core.output import print_json
    from fsan_cli.core.state import STATE
    from fsan_cli.evaluate.plots import check_plot
    from fsan_cli.ground.answer import answer
    from fsan_cli.ground.render import render, save_plot
    from fsan_cli.ground.requests import read_requests

    if duration is not None and not (math.isfinite(duration) and duration > 0):
        raise FsanError(
            f"--duration must be positive, got {duration:g}", "Pass the video's length in seconds"
        )
    if plot is not None:
        check_plot(plot, (video, checkpoint, queries_file), overwrite)
    asked = read_requests(queries or [], queries_file)
    results = answer(video, asked, video_id, checkpoint, _newest, weights, STATE.device, precision.value,
                     span_prior, top_k, duration, dataset, data_dir)
    if as_json:
        for r in results:
            print_json(r.row)
    else:
        render(results)
    if plot is not None:
        save_plot(plot, results)


def _newest() -> Path:
    """The newest runs/*/best.pt, said on stderr."""
    from fsan_cli.core.output import log
    from fsan_cli.train import runs

    found = runs.find_checkpoint()
    log(f"Checkpoint: {found} (the newest under {runs.RUNS}/; --checkpoint picks another)")
    return found
