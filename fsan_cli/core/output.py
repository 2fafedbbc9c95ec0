"""One place for how results look: rich tables on stdout, logs on stderr, JSON for scripts."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from fsan_cli.core.errors import stdout_closed
from fsan_cli.core.state import STATE


def stdout_console() -> Console:
    # Created per call so CliRunner's captured stdout is used in tests.
    # Not a terminal (a pipe, a file, a test): wide enough for the paper's tables, unless COLUMNS says
    width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120
    console = Console(file=sys.stdout, no_color="NO_COLOR" in os.environ, soft_wrap=True, width=width)
    console.on_broken_pipe = _closed  # rich's own exits 1; a closed pipe ends quietly with 141
    return console


def _closed() -> None:
    raise SystemExit(stdout_closed())


def stderr_console() -> Console:
    return Console(file=sys.stderr, no_color="NO_COLOR" in os.environ, soft_wrap=True)


def log(message: str) -> None:
    """A progress or status line on stderr (silenced by -q)."""
    if not STATE.quiet:
        stderr_console().print(message, highlight=False)


def detail(message: str) -> None:
    """A line on stderr only with -v: what went as it should, for whoever wants to see it."""
    if STATE.verbose > 0 and not STATE.quiet:
        stderr_console().print(message, highlight=False)


def warn(message: str) -> None:
    stderr_console().print(f"[yellow]Warning:[/yellow] {message}", highlight=False)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def counted(n: int, word: str, plural: str | None = None) -> str:
    """'1 window', '3 windows' ('1 query', '2 queries' with plural='queries')."""
    return f"{n} {word if n == 1 else (plural or word + 's')}"


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
    table = WholeTable(title=title, caption=caption)
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


class WholeTable(Table):
    """A table that a narrow terminal never cuts: a right-justified column (numbers) is at least
    as wide as its widest cell and does not wrap; a label column wraps between words, never inside
    one. Where even that does not fit, the table is laid out at its own least width, wider than
    the terminal (stdout soft-wraps: its lines stay whole) rather than cut or dropped."""

    def __rich_console__(self, console: Any, options: Any) -> Any:
        for column in self.columns:
            texts = [Text.from_markup(c).plain for c in column.cells if isinstance(c, str)]
            if column.justify == "right":
                column.no_wrap = True
                column.min_width = max((Text(t).cell_len for t in texts), default=0)
            else:
                column.no_wrap = all(len(t.split()) <= 1 for t in texts)
                column.min_width = max((Text(w).cell_len for t in texts for w in t.split()), default=0)
        least = self.__rich_measure__(console, options.update(width=10**6)).minimum
        if least > options.max_width:
            options = options.update(width=least)
        yield from super().__rich_console__(console, options)


class _LiveBar:
    """A rich Progress (or None when disabled) shown for the length of a `with` block."""

    progress: Any = None

    def __enter__(self) -> Self:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress:
            self.progress.stop()


class _Bar(_LiveBar):
    """A rich progress bar on stderr showing epoch, loss and samples/s (no-op when disabled)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.enabled = enabled and not STATE.quiet
        self.progress = None
        if self.enabled:
            self.progress = Progress(
                TextColumn("epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TextColumn("{task.fields[rate]:.0f} samples/s"),
                TimeRemainingColumn(),
                console=stderr_console(),
                transient=False,
            )
            self.task = self.progress.add_task("train", total=total, epoch=1, loss=0.0, rate=0.0)

    def update(self, step: int, **fields: Any) -> None:
        if self.progress:
            self.progress.update(self.task, completed=step, **fields)

    def epoch_done(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        loss = record["loss"]
        parts = [f"epoch {record['epoch']}", f"loss {loss:.4f}" if abs(loss) >= 1e-3 or loss == 0 else f"loss {loss:.2e}"]
        if "val_miou" in record:
            parts.append(f"val mIoU {record['val_miou']:.2f}")
            parts.append(f"R@1,IoU=0.5 {record['val_r1_iou0.5']:.2f}")
        elif "val_match" in record:  # sentence-only data (fsan_cli/train/matching.py)
            parts.append(f"val match {record['val_match']:.1f}% (chance {record['val_match_chance']:.0f}%)")
        if record.get("best") and ("val_miou" in record or "val_match" in record):
            parts.append("(best so far, saved)")
        elif record.get("best"):  # nothing to choose by: every epoch replaces the last
            parts.append("(saved as best.pt: no val split, the last epoch is kept)")
        target = self.progress.console if self.progress else stderr_console()
        target.print("  ".join(parts), highlight=False)


def training_progress(total: int, enabled: bool = True) -> _Bar:
    return _Bar(total, enabled)


@contextmanager
def count_progress(total: int, what: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr over `total` items; yields `advance(n)` (a no-op when
    disabled or under -q)."""

    if not enabled or STATE.quiet:
        yield lambda n: None
        return

    with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=stderr_console(), transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


class _VideoBar(_LiveBar):
    """`fsan extract`'s progress on stderr: one bar over videos, one over the current video's
    frames (no-op under -q)."""

    def __init__(self, total: int) -> None:
        self.progress = None
        if STATE.quiet:
            return

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=stderr_console(), transient=True)
        self.videos = self.progress.add_task("videos", total=total)
        self.frame_task = self.progress.add_task("frames", total=None)

    def start(self, video: str) -> None:
        if self.progress:
            self.progress.reset(self.frame_task, total=None, description=f"frames of {video}")

    def frames(self, done: int, expected: int) -> None:
        if self.progress:
            self.progress.update(self.frame_task, completed=done, total=expected)

    def done(self) -> None:
        if self.progress:
            self.progress.advance(self.videos)


def video_progress(total: int) -> _VideoBar:
    return _VideoBar(total)
