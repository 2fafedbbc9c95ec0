"""Clip features: pooling to N_v, row normalisation, PCA, and streaming reads of HDF5 feature files.

The per-video pipeline is `video_clips`: rows (T, D_in) -> PCA (optional) -> `pool_clips` to
(N_v, D) -> L2 row normalisation (optional). `fsan prepare` and `fsan ground` both call it, so a
video is turned into model input the same way at training and at inference time.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from fsan_cli.core.errors import FsanError

# --------------------------------------------------------------------------------------------
# Pooling, normalisation, PCA


def clip_bins(rows: int, clips: int) -> tuple[np.ndarray, np.ndarray]:
    """Row ranges [start, end) of the `clips` bins over `rows` feature rows.

    Clip j covers the time span [j, j + 1) * T / N_v in row units; its bin holds every row that
    overlaps that span: [floor(j * T / N_v), ceil((j + 1) * T / N_v)). Never empty; with T >= N_v
    neighbouring bins share at most one boundary row, with T < N_v each bin takes the one or two
    rows nearest its span. Integer arithmetic, so the bins are exact.
    """
    if rows <= 0:
        raise FsanError(
            "a video has no feature rows", "Check the feature file: every video needs T >= 1 rows"
        )
    if clips <= 0:
        raise FsanError(
            f"the number of clips must be positive, got {clips}", "Pass --clips N with N >= 1"
        )
    j = np.arange(clips, dtype=np.int64)
    start = (j * rows) // clips
    end = -((-(j + 1) * rows) // clips)  # ceil division
    return start, end


SHORT_BIN = 32  # bins up to this many rows are summed offset by offset, longer ones by prefix sums


def pool_clips(rows: np.ndarray, clips: int) -> np.ndarray:
    """Average contiguous bins of `rows` (T, D) into (clips, D) float32 (bins: see `clip_bins`).

    Vectorised over bins. Bins of at most SHORT_BIN rows (the usual case, e.g. ActivityNet's
    ~450 rows into 64 clips) add the k-th row of every bin at once for k = 0, 1, ... in float32
    (at most 32 terms: error ~1e-6 relative); longer bins subtract float64 prefix sums, exact
    enough for videos of any length. T == 0 raises FsanError.
    """
    rows = np.asarray(rows)
    if rows.ndim != 2:
        raise FsanError(
            f"clip features must be a (T, D) matrix, got shape {rows.shape}",
            "Pass one 2-D feature matrix per video",
        )
    start, end = clip_bins(rows.shape[0], clips)
    counts = end - start
    shortest, longest = int(counts.min()), int(counts.max())
    if longest > SHORT_BIN:
        prefix = np.zeros((rows.shape[0] + 1, rows.shape[1]), np.float64)
        np.cumsum(rows, axis=0, dtype=np.float64, out=prefix[1:])
        return ((prefix[end] - prefix[start]) / counts[:, None]).astype(np.float32)
    sums = rows[start].astype(np.float32)  # (N_v, D), a copy
    for k in range(1, longest):  # a loop over the offset inside a bin, never over bins
        if k < shortest:
            sums += rows[start + k]
        else:
            has = k < counts
            sums[has] += rows[start[has] + k]
    return sums / counts[:, None].astype(np.float32)


def l2_normalize_rows(rows: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Each row divided by its L2 norm (float32); all-zero rows stay zero."""
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.maximum(norms, eps)


def apply_pca(rows: np.ndarray, pca: dict[str, np.ndarray]) -> np.ndarray:
    """Project rows (T, D_in) with `pca` {"mean": (D_in,), "components": (D_out, D_in)}.

    All-zero rows (padding past a video's end, as in DiDeMo's average_fc7.h5) stay zero.
    """
    rows = np.asarray(rows, dtype=np.float32)
    mean = np.asarray(pca["mean"], dtype=np.float32)
    components = np.asarray(pca["components"], dtype=np.float32)
    if rows.shape[-1] != mean.shape[0]:
        raise FsanError(
            f"features have dimension {rows.shape[-1]} but the PCA expects {mean.shape[0]}",
            "Use features from the same extractor as the prepared dataset",
        )
    out = (rows - mean) @ components.T  # (T, D_out)
    out[~rows.any(axis=-1)] = 0.0
    return out


def video_clips(
    rows: np.ndarray,
    clips: int,
    *,
    pca: dict[str, np.ndarray] | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """One video's model input: rows (T, D_in) -> PCA -> pool to (clips, D) -> L2 rows."""
    if pca is not None:
        rows = apply_pca(rows, pca)
    pooled = pool_clips(rows, clips)
    return l2_normalize_rows(pooled) if normalize else pooled


class PcaFit:
    """Exact PCA from a streamed covariance: add row blocks, then `fit(dim)`.

    All-zero rows (padding) and rows with NaN/inf are left out. Memory is O(D_in^2) whatever
    the number of rows; the eigendecomposition is deterministic (component signs fixed so the
    largest-magnitude entry of each is positive).
    """

    def __init__(self, dim_in: int, block: int = 4096) -> None:
        self.dim_in = dim_in
        self.count = 0
        self._sum = np.zeros(dim_in, np.float64)
        self._gram = np.zeros((dim_in, dim_in), np.float64)
        self._buf = np.empty((block, dim_in), np.float64)
        self._fill = 0

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        keep = rows.any(axis=1) & np.isfinite(rows).all(axis=1)
        rows = rows[keep]
        while len(rows):
            take = min(len(rows), len(self._buf) - self._fill)
            self._buf[self._fill : self._fill + take] = rows[:take]
            self._fill += take
            rows = rows[take:]
            if self._fill == len(self._buf):
                self._flush()

    def _flush(self) -> None:
        block = self._buf[: self._fill]
        self._sum += block.sum(axis=0)
        self._gram += block.T @ block
        self.count += self._fill
        self._fill = 0

    def fit(self, dim: int) -> dict[str, np.ndarray]:
        self._flush()
        if dim > self.dim_in:
            raise FsanError(
                f"--pca {dim} is more than the feature dimension {self.dim_in}",
                f"Pass --pca N with N <= {self.dim_in}, or --pca 0 to keep the features as they are",
            )
        if self.count <= dim:
            raise FsanError(
                f"PCA to {dim} dims needs more than {dim} train feature rows, "
                f"found {self.count} non-zero rows",
                "Prepare more train videos, pass a smaller --pca N, or --pca 0",
            )
        mean = self._sum / self.count
        cov = (self._gram - self.count * np.outer(mean, mean)) / (self.count - 1)
        values, vectors = np.linalg.eigh(cov)  # ascending
        order = np.argsort(values)[::-1][:dim]
        components = vectors[:, order].T  # (dim, D_in)
        signs = np.sign(components[np.arange(dim), np.abs(components).argmax(axis=1)])
        components *= np.where(signs == 0, 1.0, signs)[:, None]
        total = max(float(values.clip(min=0).sum()), 1e-30)
        return {
            "mean": mean.astype(np.float32),
            "components": components.astype(np.float32),
            "explained_variance": values[order].clip(min=0).astype(np.float32),
            "explained_variance_ratio": (values[order].clip(min=0) / total).astype(np.float32),
        }


# --------------------------------------------------------------------------------------------
# HDF5 feature files


@dataclass
class FeatureLayout:
    """Where a video's (T, D) matrix sits in an HDF5 file.

    `member`: the dataset inside a per-video group (ActivityNet: "c3d_features"); None when the
    video's key is itself the dataset. `aliases(video)` gives the keys to try, best first.
    """

    description: str
    member: str | None = None
    aliases: Callable[[str], list[str]] = field(default=lambda video: [video])


@dataclass
class Located:
    video: str
    path: str  # the dataset's path in the file
    rows: int
    dim: int
    offset: int | None  # byte offset of contiguous raw storage; None: read through HDF5
    dtype: np.dtype


@dataclass
class Scan:
    found: dict[str, Located]
    missing: list[str]  # no key in the file
    empty: list[str]  # present with zero rows


def _describe(obj) -> str:
    if isinstance(obj, h5py.Dataset):
        return f"a dataset of shape {obj.shape}"
    members = list(obj.keys())
    shown = ", ".join(members[:5]) + (", ..." if len(members) > 5 else "")
    return f"a group with members [{shown}]"


def video_keys(video: str) -> list[str]:
    """The keys a video may have in a feature file, best first: its id, ActivityNet's id with or
    without `v_`, DiDeMo's file name without its extension."""
    names = [video, video[2:] if video.startswith("v_") else f"v_{video}"]
    if "." in video:
        names.append(video.rsplit(".", 1)[0])
    return names


def feature_matrix(obj, where: str, expected: str, fix: str, members: Sequence[str] = ()) -> h5py.Dataset:
    """The (T, D) numeric dataset that `obj` (an HDF5 dataset or group) is, or holds: a group's
    first of `members` present, else its only dataset. Anything else is an error naming what was
    found at its path in `where` (the file), the `expected` layout and the `fix`."""
    if isinstance(obj, h5py.Group):
        inner = [obj[m] for m in members if isinstance(obj.get(m), h5py.Dataset)][:1]
        inner = inner or [v for v in obj.values() if isinstance(v, h5py.Dataset)]
        if len(inner) != 1:
            raise FsanError(f"unexpected layout in {where}: expected {expected}; found at '{obj.name}' "
                            f"{_describe(obj)}", fix)
        obj = inner[0]
    if len(obj.shape) != 2 or obj.dtype.kind not in "fiu":
        raise FsanError(f"unexpected layout in {where}: expected {expected}; '{obj.name}' holds {obj.dtype} "
                        f"values of shape {obj.shape}, not a (T, D) matrix of clip features", fix)
    return obj


def _fast_locate(h5, video: str, layout: FeatureLayout) -> Located | None:
    """The expected layout through the low-level API (about 5x faster than h5py's objects)."""
    key = layout.aliases(video)[0]
    path = f"{key}/{layout.member}" if layout.member else key
    try:
        dsid = h5py.h5d.open(h5.id, path.encode())
    except (KeyError, ValueError):
        return None
    shape, dtype = dsid.shape, dsid.dtype
    if len(shape) != 2 or dtype.kind not in "fiu":
        return None
    plist = dsid.get_create_plist()
    raw = plist.get_layout() == h5py.h5d.CONTIGUOUS and plist.get_nfilters() == 0
    offset = dsid.get_offset() if raw else None
    return Located(video, "/" + path, int(shape[0]), int(shape[1]), offset, dtype)


def _locate(h5, video: str, layout: FeatureLayout) -> Located | None:
    fast = _fast_locate(h5, video, layout)
    if fast is not None:
        return fast
    for key in layout.aliases(video):
        obj = h5.get(key)
        if obj is None:
            continue
        obj = feature_matrix(obj, h5.filename, layout.description,
                             "Pass a file with one (T, D) matrix per video (see docs/datasets.md)",
                             [layout.member] if layout.member else ())
        plist = obj.id.get_create_plist()
        raw = plist.get_layout() == h5py.h5d.CONTIGUOUS and plist.get_nfilters() == 0
        offset = obj.id.get_offset() if raw else None
        return Located(video, obj.name, int(obj.shape[0]), int(obj.shape[1]), offset, obj.dtype)
    return None


def open_h5(path: Path):
    path = Path(path)
    if not path.is_file():
        raise FsanError(f"feature file {path} does not exist", "Pass --features with an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise FsanError(
            f"{path} is not a readable HDF5 file ({exc})",
            "Pass --features with an HDF5 (.h5/.hdf5) file",
        ) from exc


def scan_features(path: Path, videos: Sequence[str], layout: FeatureLayout) -> Scan:
    """Find every video's matrix without reading it; layout and dimension errors come here,
    before any long read."""
    found: dict[str, Located] = {}
    missing: list[str] = []
    empty: list[str] = []
    with open_h5(path) as h5:
        for video in videos:
            loc = _locate(h5, video, layout)
            if loc is None:
                missing.append(video)
            elif loc.rows == 0:
                empty.append(video)
            else:
                found[video] = loc
        if videos and not found:
            keys = list(h5.keys())[:3]
            raise FsanError(
                f"none of the {len(videos)} annotated videos is in {path}: expected "
                f"{layout.description}, keyed like '{videos[0]}'; found keys like {keys}",
                "Check that --features matches --dataset and --annotations",
            )
    dims: dict[int, str] = {}
    for loc in found.values():
        dims.setdefault(loc.dim, loc.video)
    if len(dims) > 1:
        shown = "; ".join(f"D={d} (e.g. {v})" for d, v in list(dims.items())[:3])
        raise FsanError(
            f"inconsistent feature dimensions in {path}: {shown}",
            "Every video needs features from the same extractor; regenerate the file",
        )
    return Scan(found, missing, empty)


def _read_raw(fh, loc: Located) -> np.ndarray:
    out = np.empty((loc.rows, loc.dim), loc.dtype)
    view = memoryview(out).cast("B")
    fh.seek(loc.offset)
    done = 0
    while done < len(view):
        n = fh.readinto(view[done:])
        if not n:
            raise FsanError(
                f"the feature file ends inside video {loc.video}", "The file is truncated"
            )
        done += n
    return out


def read_features(
    path: Path, locs: Sequence[Located], prefetch: int = 16
) -> Iterator[tuple[Located, np.ndarray]]:
    """Yield (location, rows) for `locs` in file order, read by a background thread.

    Contiguous uncompressed datasets are read straight from their byte offset (one sequential
    pass over the file, no HDF5 overhead); chunked or compressed ones through h5py.
    """
    ordered = sorted(locs, key=lambda loc: (loc.offset is None, loc.offset or 0, loc.path))
    out: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def produce() -> None:
        h5 = None
        try:
            with open(path, "rb", buffering=0) as fh:
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
                for loc in ordered:
                    if stop.is_set():
                        return
                    if loc.offset is not None:
                        rows = _read_raw(fh, loc)
                    else:
                        if h5 is None:
                            h5 = open_h5(path)
                        rows = h5[loc.path][()]
                    out.put((loc, rows))
            out.put(None)
        except BaseException as exc:  # handed to the consumer, raised there
            out.put(exc)
        finally:
            if h5 is not None:
                h5.close()

    thread = threading.Thread(target=produce, name="fsan-feature-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                out.get_nowait()
            except queue.Empty:
                thread.join(0.05)
