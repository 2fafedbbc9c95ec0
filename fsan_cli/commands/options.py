"""Options shared by several subcommands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DatasetOpt = Annotated[
    str,
    typer.Option(
        "--dataset",
        "-d",
        metavar="NAME",
        help="synthetic (embedded, default), activitynet, didemo, charades or custom.",
    ),
]
DataDirOpt = Annotated[
    Path,
    typer.Option("--data-dir", envvar="FSAN_DATA_DIR", metavar="DIR", help="Folder of prepared stores."),
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", metavar="FILE.toml", help="TOML file of settings over the dataset's preset.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY=VALUE", help="Override one setting, e.g. --set model.hidden=256 (repeatable)."),
]
SizeOpt = Annotated[
    str | None,
    typer.Option("--size", metavar="SIZE", help="Model size and its recipe: small (a CPU: minutes), base "
                 "(one consumer GPU) or paper (the paper's §4.2 model). Default: small on a CPU and for the "
                 "synthetic benchmark, else paper (docs/method.md, \"Sizes\")."),
]
SpanPriorOpt = Annotated[
    bool,
    typer.Option("--span-prior/--no-span-prior",
                 help="Rank segments by the model's score plus the checkpoint's span prior (learned on train, "
                 "weighted as chosen on val; used where it helped there), or by the model's score alone "
                 "(for a predictions file with span_prior fields: the model's own moments)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option("--checkpoint", metavar="FILE.pt", help="The model: a best.pt or last.pt that `fsan train` wrote."),
]
TopKOpt = Annotated[int, typer.Option("--top-k", min=1, help="Moments per query.")]
JsonLinesOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON line per result (a stream: JSON lines).")
]
