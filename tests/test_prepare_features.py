"""pool_clips and friends against plain-loop references; the HDF5 reader on every storage kind."""

from __future__ import annotations

import math
import threading

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsan_cli.core.errors import FsanError
from fsan_cli.data.feature_files import FeatureLayout, read_features, scan_features
from fsan_cli.data.features import (
    SHORT_BIN,
    PcaFit,
    apply_pca,
    clip_bins,
    l2_normalize_rows,
    pool_clips,
    video_clips,
)


def pool_reference(rows: np.ndarray, clips: int) -> np.ndarray:
    """The documented bins, one at a time: rows overlapping [j, j + 1) * T / N_v."""
    t = rows.shape[0]
    out = np.empty((clips, rows.shape[1]), np.float64)
    for j in range(clips):
        start = math.floor(j * t / clips)
        end = math.ceil((j + 1) * t / clips)
        out[j] = rows[start:end].astype(np.float64).mean(axis=0)
    return out


@pytest.mark.parametrize(
    "rows,clips",
    [
        (1, 64),
        (3, 4),
        (5, 64),
        (6, 6),
        (64, 64),
        (65, 64),
        (450, 64),
        (128, 64),
        (1000, 6),
        (SHORT_BIN * 6 + 5, 6),
        (7, 1),
        (10_000, 3),
    ],
)
def test_pool_clips_matches_plain_loop(rows, clips):
    x = np.random.default_rng(rows * 7 + clips).standard_normal((rows, 9)).astype(np.float32)
    got = pool_clips(x, clips)
    assert got.shape == (clips, 9) and got.dtype == np.float32
    np.testing.assert_allclose(got, pool_reference(x, clips), rtol=1e-5, atol=1e-5)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(1, 300),
    clips=st.integers(1, 80),
    dim=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_pool_clips_random_inputs(rows, clips, dim, seed):
    x = np.random.default_rng(seed).uniform(-100, 100, (rows, dim)).astype(np.float32)
    np.testing.assert_allclose(pool_clips(x, clips), pool_reference(x, clips), rtol=1e-5, atol=1e-4)


def test_bins_cover_every_row_and_are_never_empty():
    for t in range(1, 40):
        for n in range(1, 40):
            start, end = clip_bins(t, n)
            assert (end > start).all() and start[0] == 0 and end[-1] == t
            covered = np.zeros(t, bool)
            for s, e in zip(start, end, strict=True):
                covered[s:e] = True
            assert covered.all()


def test_identity_when_rows_equal_clips_and_constant_rows_stay():
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    np.testing.assert_array_equal(pool_clips(x, 6), x)
    const = np.tile(np.float32([1.5, -2.0]), (37, 1))
    np.testing.assert_allclose(pool_clips(const, 5), np.tile(const[:1], (5, 1)), rtol=1e-6)


def test_pool_clips_rejects_empty_and_bad_shapes():
    with pytest.raises(FsanError, match="no feature rows"):
        pool_clips(np.zeros((0, 4), np.float32), 8)
    with pytest.raises(FsanError, match=r"\(T, D\)"):
        pool_clips(np.zeros(4, np.float32), 8)
    with pytest.raises(FsanError, match="clips must be positive"):
        pool_clips(np.zeros((3, 4), np.float32), 0)


def test_l2_normalize_rows_keeps_zero_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(l2_normalize_rows(x), [[0.6, 0.8], [0.0, 0.0]])


def test_pca_fit_matches_svd_and_apply_keeps_padding():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((500, 3)) @ rng.standard_normal((3, 10)) + 5).astype(np.float32)
    fit = PcaFit(10, block=64)
    for chunk in np.array_split(x, 7):
        fit.add(chunk)
    fit.add(np.zeros((4, 10), np.float32))  # padding rows are not fitted
    pca = fit.fit(3)
    assert fit.count == 500 and pca["components"].shape == (3, 10)
    np.testing.assert_allclose(pca["mean"], x.mean(0), rtol=1e-5)
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    overlap = np.abs(pca["components"] @ vt[:3].T)  # the same subspace, up to signs
    np.testing.assert_allclose(overlap, np.eye(3), atol=1e-4)
    assert pca["explained_variance_ratio"].sum() == pytest.approx(1.0, abs=1e-5)
    rows = np.vstack([x[:2], np.zeros((1, 10), np.float32)])
    out = apply_pca(rows, pca)
    assert out.shape == (3, 3) and not out[2].any() and out[0].any()


def test_pca_errors_are_user_errors():
    fit = PcaFit(4)
    fit.add(np.ones((1, 4), np.float32))
    with pytest.raises(FsanError, match="more than the feature dimension"):
        fit.fit(5)
    with pytest.raises(FsanError, match="needs"):
        fit.fit(2)
    with pytest.raises(FsanError, match="dimension 3 but the PCA expects 4"):
        apply_pca(np.ones((2, 3)), {"mean": np.zeros(4), "components": np.eye(4)})


def test_video_clips_pipeline():
    x = np.random.default_rng(1).standard_normal((20, 6)).astype(np.float32)
    out = video_clips(x, 4)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(video_clips(x, 4, normalize=False), pool_reference(x, 4), rtol=1e-5)


def test_reader_all_storage_kinds_in_file_order(tmp_path):
    rng = np.random.default_rng(3)
    data = {f"v{i}": rng.standard_normal((i + 2, 5)).astype(np.float32) for i in range(6)}
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("v0", data=data["v0"])  # contiguous: raw reads
        h5.create_dataset("v1", data=data["v1"], chunks=(1, 5))  # chunked
        h5.create_dataset("v2", data=data["v2"], compression="gzip")  # compressed
        h5.create_dataset("v3", data=data["v3"].astype(">f4"))  # big-endian raw
        h5.create_dataset("v4", data=data["v4"].astype(np.float16))
        h5.create_group("v5").create_dataset("feats", data=data["v5"])  # one member in a group
    scan = scan_features(path, [*data, "nope"], FeatureLayout("one dataset per video"))
    assert scan.missing == ["nope"] and set(scan.found) == set(data)
    assert scan.found["v0"].offset is not None and scan.found["v2"].offset is None
    got = {loc.video: rows for loc, rows in read_features(path, list(scan.found.values()))}
    for key, want in data.items():
        tol = 1e-3 if key == "v4" else 0
        np.testing.assert_allclose(got[key].astype(np.float32), want, atol=tol)


def test_reader_stops_cleanly_when_the_consumer_stops(tmp_path):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as h5:
        for i in range(100):
            h5.create_dataset(f"v{i}", data=np.ones((3, 2), np.float32))
    scan = scan_features(path, [f"v{i}" for i in range(100)], FeatureLayout("x"))
    it = read_features(path, list(scan.found.values()), prefetch=2)
    next(it)
    it.close()  # the producer, blocked on the full queue, is unblocked and ends
    alive = [t for t in threading.enumerate() if t.name == "fsan-feature-reader" and t.is_alive()]
    assert alive == []
