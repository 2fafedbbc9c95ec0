"""`fsan ablate`: train and score the paper's Table 4 variants (and the design ones) in one go."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fsan_cli.commands.options import ConfigOpt, DataDirOpt, DatasetOpt, JsonOpt, SetOpt, SizeOpt
from fsan_cli.core.errors import FsanError, UsageError, handle_errors


@handle_errors
def ablate(
    dataset: DatasetOpt = "synthetic",
    data_dir: DataDirOpt = Path("data"),
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder of the runs (default runs/ablate-<dataset>).")
    ] = None,
    size: SizeOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Shortcut for --set train.epochs=N.")] = None,
    seeds: Annotated[
        int, typer.Option("--seeds", min=1, help="Runs per variant (seeds train.seed + 0..N-1).")
    ] = 1,
    variants: Annotated[
        str,
        typer.Option("--variants", metavar="NAMES", help="Comma list of variants or groups: table4 (default), design, all."),
    ] = "table4",
    json_: JsonOpt = False,
    csv_: Annotated[bool, typer.Option("--csv", help="Print CSV rows.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start over: retrain even finished variants.")
    ] = False,
) -> None:
    """Train and test the full model and the ablations of the paper's Table 4.

    Every variant trains with `fsan train`'s loop into OUT/<variant>[-seed<k>]/ and is scored on
    the test split. An interrupted run resumes: finished variants (with results.json) are skipped.

    Variants: table4 = full, no_grounding, no_sap_loss, no_cross_attention, no_inner_attention
    (the default); design = weights_raw, weights_softmax, sc_p, sc_p_hat, sc_centered,
    outer_literal, outer_lower, inner_sigmoid_sum, inner_log_mean (DESIGN.md's decisions, each
    beside its alternative); all. A variant whose settings equal the full model's trains once.
    Every variant is scored on its network's own answers, without the span prior (the table
    compares networks); --size picks the model size as for `fsan train`.
    """
    from fsan_cli.ablate import ablation
    from fsan_cli.ablate import report as ablation_report
    from fsan_cli.core.state import STATE

    if json_ and csv_:
        raise UsageError("--json and --csv both choose what stdout carries", "Pass only one")
    if epochs is not None and epochs < 1:
        raise FsanError(f"--epochs must be at least 1, got {epochs}",
                        "Pass a value at least 1 (train.epochs=0 trains for train.steps steps)")
    overrides = [*(set_ or []), *([f"train.epochs={epochs}"] if epochs is not None else [])]
    out = out or Path("runs") / f"ablate-{dataset}"
    jobs, store = ablation.ablate(dataset, data_dir, out, config, overrides, variants, seeds,
                                  overwrite, STATE.device, size)
    ablation_report.show(dataset, jobs, store, json_, csv_)
    ablation.check_failed(jobs)
