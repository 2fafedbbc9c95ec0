"""`fsan export`: one video of a prepared store -> a features file that `fsan ground` reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fsan_cli.commands.options import DataDirOpt, DatasetOpt
from fsan_cli.core.errors import UsageError, handle_errors

SHOWN_QUERIES = 3  # annotated queries said on stderr (--json: all of them)


@handle_errors
def export(
    video: Annotated[str, typer.Argument(metavar="VIDEO_ID", help="The video's id in the prepared store.")],
    dataset: DatasetOpt = "synthetic",
    data_dir: DataDirOpt = Path("data"),
    out: Annotated[
        Path | None, typer.Option("--out", metavar="FILE.h5", help="The file to write (default: VIDEO_ID.h5 here).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object: the path, the video and all its queries.")
    ] = False,
) -> None:
    """Write one video of a prepared store (the embedded synthetic one is generated on first use)
    as an HDF5 features file for `fsan ground`: its N_v clip features as the dataset `features`
    (a long video whose rows the store keeps: those rows, which ground reads in windows), its id
    and seconds as the attributes `video` and `duration`. The path is printed on stdout;
    a few of the video's annotated queries, with their times, on stderr (--json: one object
    with all of them). Written atomically; an existing file only with --overwrite. Example:

        fsan export syn_test_00002 --out v.h5 && fsan ground v.h5 "a woman eats the fence"
    """
    from fsan_cli.core.output import log, print_json
    from fsan_cli.data.export import export_video, open_for_export

    if out is not None and str(out) == "-":
        raise UsageError("--out - would write HDF5 onto stdout, which carries the path", "Give a file name")
    done = export_video(open_for_export(dataset, data_dir), video, out, overwrite)
    if as_json:
        print_json(done)
        return
    print(done["path"], flush=True)
    what = (f"{done['clips']} clips" if done["pooled"] else
            f"{done['rows']} rows, which fsan ground reads in windows where a model was trained on shorter videos,")
    log(f"Wrote video {done['video']} of {done['store']} ({done['duration']:g} s, {what} of "
        f"{done['feature_dim']}-d features) to {done['path']}; {len(done['queries'])} annotated queries:")
    for q in done["queries"][:SHOWN_QUERIES]:
        times = ", ".join(f"{s:g}-{e:g} s" for s, e in q["times"])
        log(f'  "{q["query"]}" ({q["split"]}{": " + times if times else ""})')
