"""`fsan ablate`'s results: one row per variant (mean and spread over seeds) beside the paper's
Table 4 and the baselines, as a rich table, CSV or JSON."""

from __future__ import annotations

import csv
import math
import sys
from typing import Any

from rich.markup import escape
from rich.table import Table

from fsan_cli.ablate.ablation import BY_NAME, PAPER_METRICS, TABLE4_ORDER, Job
from fsan_cli.core.output import WholeTable, fmt, print_json, stdout_console
from fsan_cli.data.store import Store
from fsan_cli.evaluate import baselines
from fsan_cli.evaluate.metrics import mean_sd, metric_keys
from fsan_cli.evaluate.report import DATASET_NAMES, PAPER_TABLE4, column_header
from fsan_cli.evaluate.scoring import score


def variant_rows(jobs: list[Job], dataset: str) -> list[dict[str, Any]]:
    """One row per variant (mean and sample std over seeds), in Table 4's order, design last."""
    keys = metric_keys(dataset)
    by_variant: dict[str, list[Job]] = {}
    for job in jobs:
        by_variant.setdefault(job.variant.name, []).append(job)
    order = [n for n in TABLE4_ORDER if n in by_variant] + [
        n for n in by_variant if n not in TABLE4_ORDER]
    rows = []
    for name in order:
        group = by_variant[name]
        first = group[0]
        same = first.same_as.variant.name if first.same_as is not None else None
        row: dict[str, Any] = {
            "variant": name, "label": first.variant.label, "source": "this run",
            "seeds": [j.seed for j in group],
            "runs": [str((j.same_as or j).folder) for j in group],
        }
        done = [j.result for j in group if j.result is not None]
        for key in keys:
            if len(done) == len(group):
                mean, std = mean_sd([r["metrics"][key] for r in done])
                row[key], row[f"{key}_std"] = round(mean, 4), None if std is None else round(std, 4)
            else:
                row[key] = row[f"{key}_std"] = None
        row["same_as"] = same
        errors = [j.error for j in group if j.error]
        row["error"] = errors[0] if errors else None
        rows.append(row)
    return rows


def baseline_rows(store: Store, dataset: str, seed: int, top_k: int) -> list[dict[str, Any]]:
    queries = store.split("test")
    made = [("random", f"Random baseline (seed {seed})",
             baselines.random_predictions(queries, top_k, seed, dataset))]
    if store.splits.get("train"):
        made.append(("prior", "Prior baseline (on train)",
                     baselines.prior_predictions(store.splits["train"], queries, top_k, dataset)))
    rows = []
    for name, label, preds in made:
        metrics, _ = score(dataset, queries, preds)
        rows.append({"variant": name, "label": label, "source": "baseline",
                     **{k: round(metrics[k], 4) for k in metric_keys(dataset)}})
    return rows


def paper_rows(dataset: str) -> list[dict[str, Any]]:
    """The paper's Table 4 (ActivityNet-Captions val_2), only beside an ActivityNet ablation."""
    if dataset != "activitynet":
        return []
    return [{"variant": name, "label": label, "source": "paper", **metrics}
            for name, label, metrics in PAPER_TABLE4]


def direction_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per variant: what it changed, its mIoU against the full model, and whether
    that goes the way of the paper's Table 4."""
    ours = {r["variant"]: r for r in rows if r["source"] == "this run"}
    full = ours.get("full")
    if full is None or full.get("miou") is None:
        return []
    notes, same = [], []
    for name, row in ours.items():
        if name == "full":
            continue
        if row.get("same_as") == "full":
            same.append(row["label"])
            continue
        if row.get("same_as"):
            notes.append(f"{row['label']}: the same settings as {row['same_as']} here; not trained again.")
            continue
        if row.get("miou") is None:
            notes.append(f"{row['label']}: failed: {row.get('error') or 'no result.'}")
            continue
        delta = row["miou"] - full["miou"]
        text = f"{row['label']}: {BY_NAME[name].what}; mIoU {delta:+.2f} vs the full model"
        noise = [s for s in (row.get("miou_std"), full.get("miou_std")) if s is not None]
        if noise and abs(delta) <= math.sqrt(sum(s * s for s in noise)):
            text += " (within seed noise)"
        if name in PAPER_METRICS:
            paper = PAPER_METRICS[name]["miou"] - PAPER_METRICS["full"]["miou"]
            agree = ("no change" if delta == 0 else
                     "the paper's direction" if (delta < 0) == (paper < 0) else "opposite to the paper")
            text += f" (paper {paper:+.2f}): {agree}"
        notes.append(text + ".")
    if same:
        notes.append(f"Same settings as the full model here, so not trained again: {', '.join(same)}.")
    return notes


def _cell(row: dict[str, Any], key: str, bold: bool) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    text = fmt(float(value))
    if bold:
        text = f"[bold]{text}[/bold]"
    std = row.get(f"{key}_std")
    return text if std is None else f"{text}\n±{fmt(float(std))}"


def _best(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return max(values) if values else None


def render_table(dataset: str, rows: list[dict[str, Any]], caption: str) -> Table:
    """Table 4's layout: the paper's rows (ActivityNet), this run's variants, the baselines;
    the best value per column is bold within the paper's rows and within this run's variants."""
    keys = metric_keys(dataset)
    name = DATASET_NAMES.get(dataset, dataset)
    table = WholeTable(title=f"{name}: ablations (layout of the paper's Table 4)", caption=caption,
                  caption_justify="left")
    table.add_column("Method", justify="left")
    for key in keys:
        table.add_column(column_header(key), justify="right")
    blocks = [[r for r in rows if r["source"] == s] for s in ("paper", "this run", "baseline")]
    for block in (b for b in blocks if b):
        eligible = block[0]["source"] != "baseline"
        best = {k: _best(block, k) for k in keys} if eligible else {}
        for r in block:
            suffix = {"paper": " (paper)", "this run": "", "baseline": ""}[r["source"]]
            label = r["label"] + suffix
            if r.get("same_as"):
                label += f" (= {r['same_as']})"
            if r.get("error"):
                label += " (failed)"
            cells = [_cell(r, k, eligible and r.get(k) is not None and r[k] == best[k]) for k in keys]
            table.add_row(escape(label), *cells)
        table.add_section()
    return table


def caption(dataset: str, jobs: list[Job], rows: list[dict[str, Any]], queries: int) -> str:
    seeds = sorted({j.seed for j in jobs})
    lines = [
        f"Test split, {queries} queries; every run's best.pt chosen on val by mIoU. "
        + (f"Mean and sample std (±) over seeds {', '.join(map(str, seeds))}."
           if len(seeds) > 1 else
           f"One seed ({seeds[0]}): pass --seeds 3 to tell small differences from noise.")
    ]
    if dataset == "activitynet":
        lines.append("(paper) rows: the paper's Table 4 on val_2, typed in, not recomputed.")
    lines.append("Bold: best per column among this run's variants"
                 + (" and, apart, among the paper's rows." if dataset == "activitynet" else "."))
    lines += direction_notes(rows)
    return "\n".join(lines)


CSV_FIXED = ["variant", "label", "source", "seeds", "runs"]


def csv_header(dataset: str) -> list[str]:
    keys = metric_keys(dataset)
    return [*CSV_FIXED, *keys, *(f"{k}_std" for k in keys), "same_as", "error"]


def write_csv(dataset: str, rows: list[dict[str, Any]]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    header = csv_header(dataset)
    writer.writerow(header)
    for row in rows:
        cells = []
        for key in header:
            value = row.get(key)
            if isinstance(value, list):
                value = " ".join(map(str, value))
            cells.append("" if value is None else value)
        writer.writerow(cells)


def show(dataset: str, jobs: list[Job], store: Store, as_json: bool = False, as_csv: bool = False) -> None:
    """Table 4 on stdout: the paper's rows, each variant's, and the baselines; or one JSON
    object ({"dataset", "split", "queries", "rows"}), or CSV rows."""
    base = jobs[0].cfg
    rows = [*paper_rows(dataset), *variant_rows(jobs, dataset),
            *baseline_rows(store, dataset, base.train.seed, base.eval.top_k)]
    queries = len(store.split("test"))
    if as_json:
        print_json({"dataset": dataset, "split": "test", "queries": queries, "rows": rows})
    elif as_csv:
        write_csv(dataset, rows)
    else:
        stdout_console().print(render_table(dataset, rows, caption(dataset, jobs, rows, queries)))
