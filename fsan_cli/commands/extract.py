"""`fsan extract`: video files -> CLIP image features in one HDF5 file (the custom layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fsan_cli.commands.options import JsonOpt
from fsan_cli.core.errors import FsanError, handle_errors

WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        metavar="DIR",
        help="A local CLIP vision model folder (save_pretrained: "
        "config.json, model.safetensors) instead of the Hugging Face cache.",
    ),
]


@handle_errors
def extract(
    videos: Annotated[
        list[Path],
        typer.Argument(
            metavar="VIDEO_OR_DIR...", help="Video files, or folders searched for them."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", metavar="FEATURES.h5", help="The HDF5 file to write or add to.")
    ],
    model: Annotated[
        str, typer.Option("--model", metavar="NAME", help="Hugging Face id of the CLIP model.")
    ] = "openai/clip-vit-base-patch32",
    weights: WeightsOpt = None,
    fps: Annotated[
        float,
        typer.Option("--fps", min=0.01, max=120.0, help="Frames sampled per second of video."),
    ] = 2.0,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Frames per forward pass.")] = 64,
    as_json: JsonOpt = False,
) -> None:
    """Decode videos (PyAV), sample frames at --fps and encode each with a CLIP image encoder
    (transformers' CLIPVisionModelWithProjection): one (T, D) dataset per video, named by the
    file name without its suffix, with attributes duration, fps and the extractor (model,
    image size, normalisation, sha256 of the weights). That file is what `fsan prepare
    --dataset custom --features` reads, and the extractor it records travels into the
    checkpoint, so `fsan ground VIDEO.mp4` extracts exactly the same way.

    2 frames/s by default: finer than any model's clip (ActivityNet's 64 clips of a 2-minute
    video last 1.9 s), at 240 frames for 2 minutes. Videos already in --out are skipped, so an
    interrupted run continues where it stopped. A video that cannot be decoded is reported and
    skipped, the others are kept; the exit code is then 1. Needs the video extra
    (pip install -e '.[video]'). Example:

        fsan extract videos/ --out features.h5 --weights clip-vit-base-patch32/
    """
    from fsan_cli.core.device import resolve_device
    from fsan_cli.core.output import print_json
    from fsan_cli.core.state import STATE
    from fsan_cli.video.extract import extract_files

    summary = extract_files(videos, out, model, weights, fps, batch, resolve_device(STATE.device))
    failed = summary["failed"]
    if len(failed) == 1 and not summary["videos"]:  # the one video asked: its reason alone
        raise FsanError(failed[0]["reason"])
    if as_json:
        print_json(summary)
    else:
        _render(summary)
    if failed:
        first = ", ".join(f["file"] for f in failed[:3])
        raise FsanError(
            f"{len(failed)} of {len(failed) + len(summary['videos'])} videos could not be "
            f"read ({first}{', ...' if len(failed) > 3 else ''}); the others are in {out}",
            "Fix or remove those files and run again: videos already there are skipped",
        )


def _render(s: dict[str, Any]) -> None:
    from fsan_cli.core.output import make_table, stdout_console
    from fsan_cli.video.record import describe

    rows = [
        (v["video"], v["status"], v.get("rows", "-"), v.get("duration", "-")) for v in s["videos"]
    ]
    rows += [(f["video"], "failed", "-", "-") for f in s["failed"]]
    caption = f"{describe(s['extractor'])}; {s['seconds']:g} s" if s["extractor"] else None
    stdout_console().print(
        make_table(
            f"Features in {s['out']}", ["video", "status", "rows", "seconds"], rows, caption=caption
        )
    )
