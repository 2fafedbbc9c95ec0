"""Predictions JSONL: read with validation (errors name the line), write atomically.

One line per query, moments ranked best first (DESIGN.md, "Contracts"):

    {"video": "v_x", "query": "...", "duration": 82.7, "moments": [[start_s, end_s, score], ...]}

DiDeMo lines also carry "annotation_id" and "segments": [[s, e], ...] (all 21 chunk pairs,
ranked best first, inclusive chunk indices). Other keys are kept and ignored.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fsan_cli.core.atomic import atomic_write, check_folder_of, make_folder_of
from fsan_cli.core.errors import FsanError, write_error

FORMAT_HELP = (
    'one JSON object a line: {"video": ..., "query": ..., "duration": seconds, '
    '"moments": [[start_s, end_s, score], ...]} ranked best first; DiDeMo lines add '
    '"annotation_id" and "segments": [[s, e], ...] (all 21 chunk pairs)'
)


class PredictionRow(dict):
    """A prediction line as a dict, remembering its line number for error messages."""

    line: int = 0


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _problem(obj: Any) -> str | None:
    """What is wrong with one parsed line, or None."""
    if not isinstance(obj, dict):
        return f"is a JSON {type(obj).__name__}, not an object"
    for key in ("video", "query"):
        if not isinstance(obj.get(key), str):
            return f'has no "{key}" string'
    duration = obj.get("duration")
    if duration is not None and not (_number(duration) and duration >= 0):
        return f'has "duration" {duration!r}, not a number >= 0'
    moments = obj.get("moments")
    if not isinstance(moments, list):
        return 'has no "moments" list'
    problem = moments_problem(moments, duration)
    if problem:
        return problem
    segments = obj.get("segments")
    if segments is not None and not (
        isinstance(segments, list)
        and all(
            isinstance(s, list) and len(s) == 2 and all(isinstance(x, int) for x in s)
            for s in segments
        )
    ):
        return '"segments" is not a list of [s, e] chunk index pairs'
    return None


def moments_problem(moments: Any, duration: float | None, name: str = "moment") -> str | None:
    """What is wrong with a row's ranked moments (a list of [start_s, end_s] or [start_s, end_s,
    score], 0 <= start <= end, ending within `duration` where it is known), or None."""
    if not isinstance(moments, list):
        return f"{name}s are {json.dumps(moments)}, not a list of [start_s, end_s, score]"
    for j, m in enumerate(moments):
        if not (isinstance(m, list) and len(m) in (2, 3) and all(_number(x) for x in m)):
            return f"{name} {j + 1} is {json.dumps(m)}, not [start_s, end_s] or [start_s, end_s, score]"
        if m[0] > m[1] or m[0] < 0:
            return f"{name} {j + 1} is {json.dumps(m)}: it needs 0 <= start <= end"
        if duration is not None and m[1] > duration + 1e-2 + 1e-6 * duration:
            return f"{name} {j + 1} is {json.dumps(m)}: it ends after the duration {duration:g}"
    return None


def parse_predictions(lines: Iterable[str], source: str) -> list[dict]:
    rows: list[dict] = []
    for n, text in enumerate(lines, start=1):
        text = text.removeprefix("\ufeff") if n == 1 else text  # a byte-order mark (stdin)
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FsanError(
                f"line {n} of {source} is not valid JSON ({exc.msg} at column {exc.colno})",
                f"Each line must be {FORMAT_HELP}",
            ) from None
        problem = _problem(obj)
        if problem:
            raise FsanError(f"line {n} of {source} {problem}", f"Each line must be {FORMAT_HELP}")
        row = PredictionRow(obj)
        row.line = n
        rows.append(row)
    if not rows:
        raise FsanError(f"{source} holds no predictions", f"Each line must be {FORMAT_HELP}")
    return rows


def read_predictions(path_or_dash: str | Path) -> list[dict]:
    """Read and validate a predictions JSONL file ("-" reads stdin)."""
    if str(path_or_dash) == "-":
        return parse_predictions(sys.stdin, "stdin")
    path = Path(path_or_dash)
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return parse_predictions(fh, str(path))
    except FileNotFoundError:
        raise FsanError(f"predictions file {path} does not exist", "Check the path") from None
    except IsADirectoryError:
        raise FsanError(f"{path} is a folder, not a predictions file", "Pass a .jsonl file") from None
    except UnicodeDecodeError:
        raise FsanError(f"{path} is not UTF-8 text", "Pass a predictions JSONL file") from None


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):  # numpy scalars and arrays, torch tensors
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


def _dumps(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, default=_jsonable)


def write_predictions(path: str | Path, rows: Iterable[dict], overwrite: bool = True) -> None:
    """Write rows as JSONL: to a temporary file beside `path`, then renamed ("-" = stdout);
    an existing file is replaced only with `overwrite`."""
    if str(path) == "-":
        for row in rows:
            sys.stdout.write(_dumps(row) + "\n")
        sys.stdout.flush()
        return
    path = Path(path)
    check_save_path(path, overwrite)
    make_folder_of(path, "--save-predictions")
    try:
        atomic_write(path, lambda fh: fh.writelines(_dumps(row) + "\n" for row in rows))
    except OSError as exc:  # nothing half-written is left: atomic_write removed its temporary file
        raise write_error(exc, path, "pass another --save-predictions FILE") or exc from None


def check_save_path(path: Path, overwrite: bool, inputs: dict[str, Path | None] | None = None) -> None:
    """--save-predictions FILE, before any work: never one of `inputs` (what the command reads,
    {description: path}), whatever --overwrite says; an existing file only with `overwrite`."""
    for what, source in (inputs or {}).items():
        if source is not None and _same_file(path, Path(source)):
            raise FsanError(f"--save-predictions {path} is {what}, which this command reads",
                            "Choose another file for --save-predictions")
    if path.is_dir():
        raise FsanError(f"{path} is a folder", "Pass a file name for --save-predictions")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise FsanError(f"--save-predictions {path} is a link or not a regular file, which a new "
                        "file would replace", "Give the path of a plain file")
    if path.exists() and not overwrite:
        raise FsanError(f"--save-predictions {path} already exists",
                        "Pass --overwrite to replace it, or choose another file")
    check_folder_of(path, "--save-predictions")


def _same_file(a: Path, b: Path) -> bool:
    """The same file (links followed); for paths that do not exist, the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()
