"""What `fsan ground` is asked: queries from its arguments, stdin (`-`) or a pairs file
(`--queries FILE.jsonl`).

A line is a plain query, or a JSON object `{"video": ..., "query": ..., ...}`: `video` picks one
video of a multi-video feature file, `duration` gives its seconds, and every other field (e.g.
DiDeMo's `annotation_id`, a user's own ids) is copied into the line's output. Every line is
checked before any video is read, so bad input never leaves a partial output.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsan_cli.core.errors import FsanError
from fsan_cli.core.text import tokenize

EXAMPLE = '{"video": "v_x", "query": "a person opens the door", "annotation_id": 7}'
RESERVED = ("moments", "nms", "segments", "alignment_map")  # fields that fsan writes


@dataclass
class Request:
    where: str  # "query 2", "stdin line 5", "pairs.jsonl line 3": for messages
    query: str
    video: str | None = None  # None: the file's only video, or --video-id
    duration: float | None = None  # seconds, when the line gives them
    extra: dict[str, Any] = field(default_factory=dict)  # copied into the output line


def read_requests(args: Sequence[str], queries_file: Path | None = None, stdin: Any = None) -> list[Request]:
    """Every query asked, in order: the QUERY arguments ("-": stdin's lines), then the file's."""
    out: list[Request] = []
    for n, arg in enumerate(args, 1):
        if arg == "-":
            lines = _text_lines(stdin or sys.stdin, "stdin")
            got = _parse_lines(lines, "stdin line")
            if not got:
                raise FsanError("stdin holds no queries", "Pipe one query per line into `fsan ground VIDEO -`")
            out += got
        else:
            out.append(_checked(Request(f"query {n}", arg)))
            out[-1].query = arg.strip()
    if queries_file is not None:
        got = _parse_lines(_file_lines(queries_file), f"{queries_file} line")
        if not got:
            raise FsanError(f"{queries_file} holds no queries", f"Write one JSON object per line, e.g. {EXAMPLE}")
        out += got
    if not out:
        raise FsanError("no query was given", 'Pass a sentence, "-" for stdin, or --queries FILE.jsonl')
    _check_ids(out)
    return out


def _text_lines(stream: Any, name: str) -> list[str]:
    raw = stream.buffer.read() if hasattr(stream, "buffer") else stream.read()
    if isinstance(raw, str):
        return raw.removeprefix("\ufeff").splitlines()
    try:
        return raw.decode("utf-8-sig").splitlines()  # a byte-order mark at the start is dropped
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise FsanError(f"{name} line {line} is not UTF-8 text", "Convert the input to UTF-8") from None


def _file_lines(path: Path) -> list[str]:
    path = Path(path)
    if path.is_dir():
        raise FsanError(f"--queries {path} is a folder", "Pass a JSON lines file")
    try:
        with open(path, "rb") as fh:
            return _text_lines(fh, str(path))
    except FileNotFoundError:
        raise FsanError(f"--queries {path} does not exist", "Check the path") from None


def _parse_lines(lines: list[str], where: str) -> list[Request]:
    out = []
    for i, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        at = f"{where} {i}"
        out.append(_checked(_from_json(text, at) if text.startswith("{") else Request(at, text)))
    return out


def _from_json(text: str, at: str) -> Request:
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise FsanError(f"{at} is not valid JSON ({exc})", f"Write one JSON object per line, e.g. {EXAMPLE}") from None
    if not isinstance(obj, dict):
        raise FsanError(f"{at} is not a JSON object", f"Write one JSON object per line, e.g. {EXAMPLE}")
    query = obj.pop("query", None)
    if not isinstance(query, str):
        raise FsanError(f"{at} has no \"query\" string", f"Write e.g. {EXAMPLE}")
    has_video = "video" in obj
    video = obj.pop("video", None)
    if has_video and video is None:
        raise FsanError(f"{at} has \"video\": null", "Give the video's id as a string, or leave the field out")
    if video is not None and (isinstance(video, bool) or not isinstance(video, str | int)):
        raise FsanError(f"{at} has \"video\": {json.dumps(video)}, not an id", "Give the video's id as a string")
    duration = obj.pop("duration", None)
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, int | float)
                                 or not math.isfinite(duration) or duration <= 0):
        raise FsanError(f"{at} has \"duration\": {json.dumps(duration)}", "Give the video's length in seconds (> 0)")
    clash = [k for k in RESERVED if k in obj]
    if clash:
        raise FsanError(f"{at} has the field {clash[0]!r}, which fsan writes", "Rename or drop it")
    return Request(at, query.strip(), None if video is None else str(video),
                   None if duration is None else float(duration), obj)


def _checked(request: Request) -> Request:
    if not tokenize(request.query):
        raise FsanError(f"{request.where} ({request.query!r}) has no words",
                        'Pass a sentence, e.g. fsan ground video.h5 "a person opens the door"')
    return request


def _check_ids(requests: list[Request]) -> None:
    seen: dict[str, str] = {}
    for r in requests:
        if "annotation_id" not in r.extra:
            continue
        key = json.dumps(r.extra["annotation_id"])
        if key in seen:
            raise FsanError(f"{r.where} repeats annotation_id {r.extra['annotation_id']} of {seen[key]}",
                            "Give each query its own id")
        seen[key] = r.where
