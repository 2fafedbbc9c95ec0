"""`fsan ground`: ground sentences in one video, as a table and heatmap or as JSON lines."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from fsan_cli.errors import FsanError, handle_errors
from fsan_cli.options import CheckpointOpt, JsonLinesOpt, TopKOpt


class Precision(StrEnum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


@handle_errors
def ground(
    video: Annotated[Path, typer.Argument(metavar="VIDEO.h5", help="The video's clip features.")],
    queries: Annotated[
        list[str],
        typer.Argument(metavar="QUERY", help="Sentences; '-' reads one per line from stdin."),
    ],
    checkpoint: CheckpointOpt = None,
    video_id: Annotated[
        str | None, typer.Option("--video-id", metavar="ID", help="Which video of a multi-video file.")
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option("--duration", help="Video length in seconds, if the file has none."),
    ] = None,
    top_k: TopKOpt = 5,
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
) -> None:
    """Find the moments of VIDEO.h5 that QUERY describes: top-k (start, end, score) and the
    word-by-clip alignment map (paper Figure 3).

    VIDEO.h5 holds a (T, D) dataset `features` and an attribute `duration` (seconds), or is an
    official feature file (a group per video holding `c3d_features`, or a (T, D) dataset per
    video; pick one with --video-id). Features are pooled, normalised and projected as at
    training time. Without --checkpoint, the newest runs/*/best.pt answers. --json prints one
    line per query: the predictions format plus its alignment_map. Blank stdin lines are
    skipped. Example:

        fsan ground v.h5 - --json < q.txt | fsan evaluate --predictions -
    """
    from fsan_cli import grounding as g
    from fsan_cli import runs
    from fsan_cli.device import resolve_device
    from fsan_cli.ground_render import check_plot, render, save_plot
    from fsan_cli.output import log, print_json
    from fsan_cli.predict import Predictor
    from fsan_cli.state import STATE

    if duration is not None and not duration > 0:
        raise FsanError(
            f"--duration must be positive, got {duration:g}", "Pass the video's length in seconds"
        )
    if plot is not None:
        check_plot(plot)
    asked = g.read_queries(queries)
    clip = g.read_video(video, video_id)
    if checkpoint is None:
        checkpoint = runs.find_checkpoint()
        log(f"Checkpoint: {checkpoint} (the newest under {runs.RUNS}/; --checkpoint picks another)")
    predictor = Predictor.load(checkpoint, resolve_device(STATE.device), precision.value)
    seconds = g.resolve_duration(clip, duration, predictor.dataset)
    results = g.ground_video(predictor, clip, seconds, asked, top_k)
    if as_json:
        for r in results:
            print_json(g.grounding_row(clip.video, seconds, r, predictor.nms))
    else:
        render(clip.video, seconds, results)
    if plot is not None:
        save_plot(plot, clip.video, seconds, results)
