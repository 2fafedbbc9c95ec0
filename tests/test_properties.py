"""Property-based tests (hypothesis) of the metrics and the segment scores: IoU symmetric and
in [0, 1]; R@k non-decreasing in k; SC unchanged by padding tokens; predictions independent of
the order of the queries in a batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fsan_cli.evaluate.metrics import iou, moment_hits
from models.config import FSANConfig
from models.fsan import FSAN
from models.segments import segment_scores, top_k_segments

seconds = st.floats(0, 1000, allow_nan=False, allow_infinity=False)


@st.composite
def moments(draw) -> list[float]:
    a, b = draw(seconds), draw(seconds)
    return [min(a, b), max(a, b)]


@given(moments(), moments())
def test_iou_is_symmetric_and_within_0_1(a, b):
    x, y = iou(np.array(a), np.array(b)), iou(np.array(b), np.array(a))
    assert x == y
    assert 0.0 <= x <= 1.0


@given(moments())
def test_iou_of_a_moment_with_itself_is_1_unless_empty(a):
    assert iou(np.array(a), np.array(a)) == (1.0 if a[1] > a[0] else 0.0)


@given(st.lists(st.tuples(st.lists(moments(), min_size=0, max_size=8),
                          st.lists(moments(), min_size=1, max_size=3)), min_size=1, max_size=10))
def test_recall_at_k_never_decreases_with_k(queries):
    preds, gts = [q[0] for q in queries], [q[1] for q in queries]
    hits, _ = moment_hits(preds, gts, ks=(1, 2, 3, 5, 8), thresholds=(0.1, 0.3, 0.5, 0.7))
    assert (np.diff(hits.astype(int), axis=1) >= 0).all()  # (Q, ks, thresholds)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(2, 12), st.integers(0, 2**31 - 1))
def test_segment_scores_unchanged_by_padding(n_tok, n_pad, nv, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(2, n_tok, nv, generator=g) * 2 - 1  # (B, Ns, Nv)
    mask = torch.ones(2, n_tok, dtype=torch.bool)
    junk = torch.rand(2, n_pad, nv, generator=g) * 2 - 1  # whatever the padded rows hold
    padded = segment_scores(torch.cat([p, junk], 1), torch.cat([mask, torch.zeros(2, n_pad, dtype=torch.bool)], 1))
    torch.testing.assert_close(padded, segment_scores(p, mask), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def model() -> FSAN:
    torch.manual_seed(0)
    cfg = FSANConfig(word_dim=8, feature_dim=6, clips=8, hidden=16, layers=1, heads=2, dropout=0.1,
                     align_dim=8, max_tokens=8)
    return FSAN(cfg, torch.randn(20, 8)).eval()


@settings(max_examples=25, deadline=None)
@given(st.permutations(list(range(6))), st.integers(0, 2**31 - 1))
def test_predictions_do_not_depend_on_query_order(model, order, seed):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(6, 8, 6, generator=g)
    lengths = torch.randint(1, 9, (6,), generator=g)
    tokens = torch.randint(1, 20, (6, 8), generator=g) * (torch.arange(8) < lengths[:, None])
    order = torch.tensor(order)
    with torch.no_grad():
        sc = model(video, tokens).segment_scores
        sc_perm = model(video[order], tokens[order]).segment_scores
    torch.testing.assert_close(sc_perm, sc[order], rtol=1e-5, atol=1e-5)
    seg, _ = top_k_segments(sc, 5, 0.5)
    seg_perm, _ = top_k_segments(sc_perm, 5, 0.5)
    assert torch.equal(seg_perm, seg[order])
