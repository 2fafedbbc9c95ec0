"""The prepared store: what `fsan prepare` writes and `train`/`evaluate`/`ground` read.

Layout of `data/<dataset>/` (format version 1):

    manifest.json   dataset, format_version, clips (N_v), feature_dim, normalize, pca,
                    word_vectors {source, dim, sha256} (text.vectors_record), tokenizer (text.TOKENIZER;
                    absent in older stores: 1), splits {name: n_queries}, inputs [...], summary
    features.npy    float32 (n_videos, clips, feature_dim): clip features pooled to N_v
    videos.jsonl    one line per row of features.npy: {"video", "duration", "rows"}
    vocab.txt       one word a line; line 0 is <pad>, line 1 is <unk>
    vectors.npy     float32 (len(vocab), word_dim): frozen word vectors (rows 0 and 1 are zero)
    <split>.jsonl   one query a line: {"video", "query", "duration", "times": [[s, e], ...]}
                    (seconds; several pairs when several annotators). DiDeMo lines also carry
                    "annotation_id" and "chunks": [[a, b], ...] (inclusive 5-second chunk indices).
    pca.npz         optional: "mean" (D_in,), "components" (D_out, D_in) applied before pooling
    rows.npy        optional: float32 (R, feature_dim), the rows (PCA'd, before pooling) of the long
                    videos (`long_videos`), each at its videos.jsonl line's "raw_at" (its "rows" long):
                    a model reads a video longer than it was trained on in windows of these
                    (fsan_cli/predict/windows.py)

A store is written into a temporary folder beside the target and renamed into place, so an
interrupted prepare never leaves a store that `train` would read.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fsan_cli.core.atomic import _umask
from fsan_cli.core.errors import FsanError, out_of_space, write_error
from fsan_cli.core.output import counted, log

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass
class Query:
    video: str
    query: str
    duration: float
    times: list[list[float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"video": self.video, "query": self.query, "duration": self.duration}
        if self.times:
            out["times"] = self.times
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Query:
        extra = {k: v for k, v in obj.items() if k not in ("video", "query", "duration", "times")}
        return cls(
            video=str(obj["video"]),
            query=str(obj["query"]),
            duration=float(obj["duration"]),
            times=[[float(a), float(b)] for a, b in obj.get("times", [])],
            extra=extra,
        )


@dataclass
class Store:
    path: Path
    manifest: dict[str, Any]
    features: np.ndarray  # (n_videos, clips, feature_dim) float32
    videos: list[dict[str, Any]]
    vocab: list[str]
    vectors: np.ndarray  # (len(vocab), word_dim) float32
    splits: dict[str, list[Query]]
    pca: dict[str, np.ndarray] | None = None
    raw: np.ndarray | None = None  # (R, feature_dim) rows.npy: the long videos' rows, or None

    @property
    def video_index(self) -> dict[str, int]:
        return {v["video"]: i for i, v in enumerate(self.videos)}

    @property
    def clips(self) -> int:
        return int(self.features.shape[1])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[2])

    def kept_rows(self, v: int) -> np.ndarray | None:
        """The rows (after the PCA, before pooling) that rows.npy keeps of video `v` (a long
        video), or None where it keeps none."""
        meta = self.videos[v]
        if self.raw is None or "raw_at" not in meta:
            return None
        return np.asarray(self.raw[meta["raw_at"]: meta["raw_at"] + meta["rows"]], np.float32)

    def split(self, name: str) -> list[Query]:
        if name not in self.splits:
            raise FsanError(
                f"split '{name}' is not in the store at {self.path}",
                f"Use one of: {', '.join(self.splits) or '(none)'}",
            )
        return self.splits[name]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def store_exists(path: Path) -> bool:
    return (Path(path) / "manifest.json").is_file()


def load_store(path: Path, mmap: bool = False) -> Store:
    """Read a prepared store; a missing or partial one is a FsanError naming `fsan prepare`."""
    path = Path(path)
    if not store_exists(path):
        raise FsanError(
            f"no prepared data at {path}",
            f"Run `fsan prepare --dataset {path.name} ...` first, or pass --data-dir",
        )
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("format_version") != FORMAT_VERSION:
            raise FsanError(
                f"the store at {path} has format version {manifest.get('format_version')}, "
                f"this fsan reads version {FORMAT_VERSION}",
                "Run `fsan prepare` again to rebuild it",
            )
        features = np.load(path / "features.npy", mmap_mode="r" if mmap else None)
        videos = _read_jsonl(path / "videos.jsonl")
        vocab = (path / "vocab.txt").read_text(encoding="utf-8").split("\n")
        if vocab and vocab[-1] == "":
            vocab = vocab[:-1]
        vectors = np.load(path / "vectors.npy")
        splits = {}
        for name in manifest.get("split_names", SPLITS):
            f = path / f"{name}.jsonl"
            if f.is_file():
                splits[name] = [Query.from_json(o) for o in _read_jsonl(f)]
        raw = np.load(path / "rows.npy", mmap_mode="r") if (path / "rows.npy").is_file() else None
        pca = None
        if (path / "pca.npz").is_file():
            with np.load(path / "pca.npz") as z:
                pca = {k: z[k] for k in z.files}
    except FsanError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise FsanError(
            f"the prepared store at {path} is damaged ({exc})",
            "Run `fsan prepare` again to rebuild it",
        ) from exc
    if len(videos) != features.shape[0]:
        raise FsanError(
            f"the store at {path} lists {len(videos)} videos but holds {features.shape[0]} feature rows",
            "Run `fsan prepare` again to rebuild it",
        )
    _check_rows(path, videos, features, raw)
    return Store(path, manifest, features, videos, vocab, vectors, splits, pca, raw)


def _check_rows(path: Path, videos: list[dict], features: np.ndarray, raw: np.ndarray | None) -> None:
    """rows.npy holds every kept long video's rows, one after another as `write_store` lays them
    ("raw_at", "rows" long), as wide as the features: a store whose rows.npy is missing, cut
    short or of another width, or whose videos.jsonl places them otherwise, is damaged."""
    kept = [v for v in videos if "raw_at" in v]
    if not kept:
        return
    long = counted(len(kept), "long video")
    whole = all(isinstance(v.get(k), int) and not isinstance(v.get(k), bool) for v in kept for k in ("raw_at", "rows"))
    if not whole:
        raise FsanError(f"the store at {path} keeps the rows of {long}, and videos.jsonl does not say where "
                        "(\"raw_at\" and \"rows\" whole numbers)", "Run `fsan prepare` again to rebuild it")
    at = np.array([v["raw_at"] for v in kept], np.int64)
    size = np.array([v["rows"] for v in kept], np.int64)
    order = np.argsort(at, kind="stable")
    at, size = at[order], size[order]
    end = at + size
    if at[0] != 0 or (size < 1).any() or (at[1:] != end[:-1]).any():
        raise FsanError(f"the store at {path} keeps the rows of {long}, and videos.jsonl places them in rows.npy "
                        "with gaps or overlaps", "Run `fsan prepare` again to rebuild it")
    if raw is None:
        what = "is missing"
    elif raw.ndim != 2 or raw.shape[0] != int(end[-1]) or raw.shape[1] != features.shape[-1]:
        what = f"holds {'x'.join(map(str, raw.shape))} rows and features, not {int(end[-1])}x{features.shape[-1]}"
    else:
        return
    raise FsanError(f"the store at {path} keeps the rows of {long}, and its rows.npy {what}",
                    "Run `fsan prepare` again to rebuild it")


def write_store(
    path: Path,
    manifest: dict[str, Any],
    features: np.ndarray,
    videos: list[dict[str, Any]],
    vocab: list[str],
    vectors: np.ndarray,
    splits: dict[str, list[Query]],
    pca: dict[str, np.ndarray] | None = None,
    where: str = "--out or --data-dir",
    raw: dict[str, np.ndarray] | None = None,
) -> None:
    """Write a store atomically: into a temporary folder, then renamed over `path`; `where`,
    the options that chose `path` (`fsan prepare`'s; the synthetic store: --data-dir), is the
    fix an Error names; `raw`, {video: (T, feature_dim) rows} of the long videos, goes to
    rows.npy."""
    path = Path(path)
    if features.ndim != 3 or features.shape[0] != len(videos):
        raise ValueError(f"features must be (n_videos, clips, dim), got {features.shape}")
    made = not path.parent.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clear_stale(path)
        tmp = Path(tempfile.mkdtemp(prefix=f"{temp_prefix(path)}{os.getpid()}-", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # as mkdir would make it, not mkdtemp's 0700
    except OSError as exc:
        raise FsanError(
            f"cannot write the store at {path} ({exc.strerror or exc})",
            f"Choose another {where} that can be written",
        ) from None
    try:
        manifest = dict(manifest)
        manifest["format_version"] = FORMAT_VERSION
        manifest["clips"] = int(features.shape[1])
        manifest["feature_dim"] = int(features.shape[2])
        manifest["split_names"] = list(splits)
        manifest["splits"] = {k: len(v) for k, v in splits.items()}
        np.save(tmp / "features.npy", np.ascontiguousarray(features, dtype=np.float32))
        if raw:
            videos, at = [dict(v) for v in videos], 0
            for v in videos:  # each kept video's offset in rows.npy
                if v["video"] in raw:
                    v["raw_at"], at = at, at + len(raw[v["video"]])
            np.save(tmp / "rows.npy", np.concatenate([raw[v["video"]] for v in videos if "raw_at" in v]))
        _write_jsonl(tmp / "videos.jsonl", videos)
        (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        np.save(tmp / "vectors.npy", np.ascontiguousarray(vectors, dtype=np.float32))
        for name, queries in splits.items():
            _write_jsonl(tmp / f"{name}.jsonl", [q.to_json() for q in queries])
        if pca is not None:
            np.savez(tmp / "pca.npz", **pca)
        # manifest last: a folder without it is never read as a store
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
        tmp.rename(path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        exc = out_of_space(exc, tmp, path)  # before the half-written folder frees its space
        shutil.rmtree(tmp, ignore_errors=True)
        if made:  # the --data-dir this write created, left empty
            with contextlib.suppress(OSError):
                path.parent.rmdir()
        error = write_error(exc, f"the store at {path}", f"choose another {where}")
        if error is not None:  # a full disk, a read-only path: the half-written folder is gone
            raise error from None
        raise


def temp_prefix(path: Path) -> str:
    """How the temporary folders of a store's write begin: `.NAME.tmp-`, then the writer's PID
    and a random part (`.NAME.tmp-PID-XXXXXXXX`), so that a later write can tell whose they are."""
    return f".{Path(path).name}.tmp-"


def clear_stale(path: Path) -> list[Path]:
    """Remove what killed writes of the store at `path` left beside it: temporary folders, and
    a replaced store's `.NAME.old-PID` once the new store is in place, of processes that have
    ended (a live writer's are left alone); returns what was removed."""
    path = Path(path)
    stale = []
    for folder in path.parent.glob(f"{glob.escape(temp_prefix(path))}*-*"):
        pid = folder.name[len(temp_prefix(path)):].split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            stale.append(folder)
    if store_exists(path):
        for folder in path.parent.glob(f".{glob.escape(path.name)}.old-*"):
            pid = folder.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not process_alive(int(pid)):
                stale.append(folder)
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    if stale:
        log(f"Removed {len(stale)} unfinished folder(s) that a killed `fsan prepare` left beside {path}")
    return stale


def process_alive(pid: int) -> bool:
    """Whether the process `pid` is running (another user's counts as running)."""
    if pid <= 0:
        return True  # not a PID this module wrote: never treated as stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def long_videos(splits: dict[str, list[Query]], durations: dict[str, float], videos: list[str]) -> frozenset:
    """The videos whose rows a store keeps (rows.npy): those longer than every train video, which
    a model trained on the store reads in windows (fsan_cli/predict/windows.py); without a train
    split (a store to evaluate on) all of them."""
    train = [durations[q.video] for q in splits.get("train", []) if q.video in durations]
    if not train:
        return frozenset(videos)
    return frozenset(v for v in videos if durations[v] > max(train))


def video_rows(store: Store, queries: list[Query]) -> np.ndarray:
    """(Q,) the store's feature row of each query's video; checks videos and durations."""
    index = store.video_index
    missing = [q.video for q in queries if q.video not in index]
    if missing:
        raise FsanError(
            f"{len(missing)} queries name videos missing from the store (first: {missing[0]})",
            "Run `fsan prepare` again",
        )
    bad = [i for i, q in enumerate(queries) if not (math.isfinite(q.duration) and q.duration > 0)]
    if bad:
        q = queries[bad[0]]
        raise FsanError(
            f"{len(bad)} queries have a duration that is not a positive number of seconds "
            f"(first: video {q.video}, duration {q.duration})",
            "Fix the annotations and run `fsan prepare` again",
        )
    return np.array([index[q.video] for q in queries], np.int64)
