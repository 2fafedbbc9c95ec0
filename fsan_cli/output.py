"""One place for how results look: rich tables on stdout, logs on stderr, JSON for scripts."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table


def stdout_console() -> Console:
    # Created per call so CliRunner's captured stdout is used in tests.
    return Console(file=sys.stdout, no_color="NO_COLOR" in os.environ, soft_wrap=True)


def stderr_console() -> Console:
    return Console(file=sys.stderr, no_color="NO_COLOR" in os.environ, soft_wrap=True)


def log(message: str) -> None:
    """A progress or status line on stderr (silenced by -q)."""
    from fsan_cli.state import STATE

    if not STATE.quiet:
        stderr_console().print(message, highlight=False)


def warn(message: str) -> None:
    stderr_console().print(f"[yellow]Warning:[/yellow] {message}", highlight=False)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def make_table(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    caption: str | None = None,
    bold_best: Sequence[int] = (),
) -> Table:
    """A results table; `bold_best` names numeric columns whose best (max) value is bolded."""
    rows = [list(r) for r in rows]
    best: dict[int, float] = {}
    for c in bold_best:
        values = [r[c] for r in rows if isinstance(r[c], int | float)]
        if values:
            best[c] = max(values)
    table = Table(title=title, caption=caption)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    for r in rows:
        cells = []
        for c, v in enumerate(r):
            text = fmt(v)
            if c in best and isinstance(v, int | float) and v == best[c]:
                text = f"[bold]{text}[/bold]"
            cells.append(text)
        table.add_row(*cells)
    return table
