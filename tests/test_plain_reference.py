"""benchmarks/plain_reference.py compares our training step with a plain version of the same
model; the comparison is fair only if the plain losses are ours, so they are checked here."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from models.fsan import FSANConfig, FSANOutput, fsan_losses, segment_scores

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
plain_reference = pytest.importorskip("plain_reference")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plain_losses_are_the_paper_form_of_ours(seed):
    g = torch.Generator().manual_seed(seed)
    b, ns, nv = 5, 7, 12

    def output():
        p = torch.rand(b, ns, nv, generator=g) * 2 - 1
        lengths = torch.randint(1, ns + 1, (b,), generator=g)
        tm = torch.arange(ns)[None] < lengths[:, None]
        return FSANOutput(p, segment_scores(p, tm), tm)

    pos, neg = output(), output()
    cfg = FSANConfig(sc_map="p", weights="softmax", tau=0.1, match_score="sc", match_tau=0.0,
                     inner_form="sigmoid_sum", outer="lower", margin=0.2)  # fmt: skip
    ours = fsan_losses(SimpleNamespace(cfg=cfg), pos, neg, torch.ones(b, dtype=torch.bool)).total
    plain = plain_reference.plain_losses(pos.alignment_map, pos.token_mask, neg.alignment_map, neg.token_mask)
    assert plain.item() == pytest.approx(ours.item(), rel=1e-5, abs=1e-6)
