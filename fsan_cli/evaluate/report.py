"""Results tables in the layout of the paper's Tables 2 (DiDeMo), 3 (ActivityNet-Captions) and 4.

The rows marked "(paper)" are typed in from the paper (test split: DiDeMo test, ActivityNet-
Captions val_2); they are never recomputed. "-" is a metric the paper does not report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

from fsan_cli.core.output import WholeTable, fmt
from fsan_cli.evaluate.metrics import metric_keys, recall_key

Row = tuple[str, dict[str, float]]

FULLY = "fully supervised"
WEAKLY = "weakly supervised"


def _didemo(r1: float, r5: float, miou: float) -> dict[str, float]:
    return {"rank@1": r1, "rank@5": r5, "miou": miou}


def _anet(*values: float | None, miou: float | None = None) -> dict[str, float]:
    keys = [recall_key(k, t) for k in (1, 5) for t in (0.1, 0.3, 0.5)]
    out = {k: v for k, v in zip(keys, values, strict=True) if v is not None}
    if miou is not None:
        out["miou"] = miou
    return out


# (group, label, metrics): paper Table 2, DiDeMo test
PAPER_TABLE2: list[tuple[str, str, dict[str, float]]] = [
    (FULLY, "MCN 2017", _didemo(28.10, 78.21, 41.08)),
    (FULLY, "TGN 2018", _didemo(28.23, 79.26, 42.97)),
    (FULLY, "MAN 2019a", _didemo(27.02, 81.70, 41.16)),
    (FULLY, "I2N 2021", _didemo(29.00, 73.09, 44.32)),
    (WEAKLY, "Random", _didemo(3.75, 22.5, 22.64)),
    (WEAKLY, "TGA 2019", _didemo(12.19, 39.74, 24.92)),
    (WEAKLY, "WLLN 2019", _didemo(19.40, 53.10, 25.40)),
    (WEAKLY, "VLANet 2020", _didemo(19.32, 65.68, 25.33)),
    (WEAKLY, "FSAN", _didemo(19.40, 57.85, 31.92)),
]

# paper Table 3, ActivityNet-Captions val_2; FSAN's mIoU is the full model's of Table 4
PAPER_TABLE3: list[tuple[str, str, dict[str, float]]] = [
    (FULLY, "ABLR 2019", _anet(73.30, 55.67, 36.79, None, None, None)),
    (FULLY, "DEBUG 2019", _anet(None, 55.91, 39.72, None, None, None)),
    (FULLY, "CMIN 2019b", _anet(None, 63.61, 43.40, None, 80.54, 67.95)),
    (FULLY, "2D-TAN 2020b", _anet(None, 58.75, 44.05, None, 85.65, 76.65)),
    (WEAKLY, "Random", _anet(38.23, 18.64, 7.63, 75.74, 52.78, 24.49)),
    (WEAKLY, "WSSLN 2019", _anet(75.4, 42.8, 22.7, None, None, None)),
    (WEAKLY, "SCN 2020", _anet(71.48, 47.23, 29.22, 90.88, 71.45, 55.69)),
    (WEAKLY, "FSAN", _anet(78.45, 55.11, 29.43, 92.59, 76.79, 63.32, miou=36.10)),
]

# paper Table 4, ablations on ActivityNet-Captions val_2: (setting, label, metrics)
PAPER_TABLE4: list[tuple[str, str, dict[str, float]]] = [
    ("no_grounding", "w/o grounding module",
     _anet(82.58, 47.99, 21.09, 86.34, 52.60, 22.85, miou=34.57)),
    ("no_sap_loss", "w/o loss on SAP", _anet(65.59, 46.08, 26.31, 88.92, 66.11, 36.72, miou=30.15)),
    ("no_cross_attention", "w/o cross-modal attention",
     _anet(74.51, 43.36, 27.03, 81.02, 65.37, 53.41, miou=32.68)),
    ("no_inner_attention", "w/o inner-modal attention",
     _anet(76.75, 50.40, 28.71, 91.39, 71.89, 50.81, miou=34.18)),
    ("full", "full model", _anet(78.45, 55.11, 29.43, 92.59, 76.79, 63.32, miou=36.10)),
]


PAPER_TABLES = {"didemo": PAPER_TABLE2, "activitynet": PAPER_TABLE3}
TABLE_NAMES = {"didemo": "Table 2", "activitynet": "Table 3"}
DATASET_NAMES = {
    "activitynet": "ActivityNet-Captions",
    "didemo": "DiDeMo",
    "charades": "Charades-STA",
    "synthetic": "Embedded synthetic benchmark",
    "custom": "Custom dataset",
}


def column_header(key: str) -> str:
    if key == "miou":
        return "mIoU"
    if key.startswith("rank@"):
        return "Rank@" + key.split("@", 1)[1]
    k, t = key.split(",")
    return f"R@{k.split('@')[1]}\nIoU\n{t.split('=')[1]}"  # three short lines fit 80 columns


def results_table(
    dataset: str,
    rows: list[Row],
    paper_rows: bool = True,
    caption: str | None = None,
    title: str | None = None,
    thresholds: Sequence[float] | None = None,
) -> Table:
    """A rich table in the layout of the paper's table for `dataset`; this run's rows last.

    The paper's rows (labelled "(paper)") come first for activitynet and didemo when `paper_rows`;
    with other IoU `thresholds` than the paper's, the columns it did not report are empty.
    """
    keys = metric_keys(dataset, thresholds)
    name = DATASET_NAMES.get(dataset, dataset)
    if title is None:
        where = f" (layout of the paper's {TABLE_NAMES[dataset]})" if dataset in TABLE_NAMES else ""
        title = f"{name}{where}"
    table = WholeTable(title=title, caption=caption, caption_justify="left")
    table.add_column("Method", justify="left")
    for key in keys:
        table.add_column(column_header(key), justify="right")
    paper = PAPER_TABLES.get(dataset, []) if paper_rows else []
    group = None
    for g, label, metrics in paper:
        if g != group:
            if group is not None:
                table.add_section()
            table.add_row(f"[italic]{g} (paper)[/italic]", *[""] * len(keys))
            group = g
        table.add_row(f"{label} (paper)", *[fmt(metrics.get(k)) for k in keys])
    if paper:
        table.add_section()
    for label, metrics in rows:
        table.add_row(escape(label), *[fmt(metrics.get(k)) for k in keys])
    return table


def length_table(dataset: str, buckets: Sequence[Any], caption: str | None = None) -> Table:
    """The metrics by video length (paper Figure 4): a row per bucket (`breakdown.LengthBucket`:
    label, queries, metrics), a column per metric of the dataset's protocol."""
    keys = metric_keys(dataset)
    name = DATASET_NAMES.get(dataset, dataset)
    table = WholeTable(title=f"{name} by video length (paper Figure 4)", caption=caption,
                  caption_justify="left")
    table.add_column("Video length", justify="left")
    table.add_column("Queries", justify="right")
    for key in keys:
        table.add_column(column_header(key), justify="right")
    for b in buckets:
        table.add_row(escape(b.label), str(b.queries), *[fmt(b.metrics.get(k)) for k in keys])
    return table
