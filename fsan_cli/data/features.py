"""Clip features: pooling to N_v, row normalisation, PCA (reading them from HDF5 files:
data/feature_files.py).

The per-video pipeline is `video_clips`: rows (T, D_in) -> PCA (optional) -> `pool_clips` to
(N_v, D) -> L2 row normalisation (optional). `fsan prepare` and `fsan ground` both call it, so a
video is turned into model input the same way at training and at inference time.
"""

from __future__ import annotations

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
