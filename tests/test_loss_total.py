"""fsan_losses in the paper's form (SC on P, softmax weights, hard max of SC, sigmoid-sum inner,
lower outer, margin 0.2, lambda 1/3 each) is eq. 13 of eq. 6's hinge on the best segment score of
the positive and negative pass and the SAP losses. The pieces (segment scores, weights, inner and
outer losses) are checked against plain loops in test_model.py; this checks how fsan_losses puts
them together. (The plain PyTorch model that `python -m benchmarks.speed.plain_reference` times
checks its own losses against fsan_losses before timing.)"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from models.config import FSANConfig
from models.fsan import FSANOutput
from models.losses import fsan_losses, inner_loss, outer_loss
from models.segments import segment_scores, segment_weights


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paper_form_total_is_eq_13(seed):
    g = torch.Generator().manual_seed(seed)
    b, ns, nv = 5, 7, 12

    def output():
        p = torch.rand(b, ns, nv, generator=g) * 2 - 1
        lengths = torch.randint(1, ns + 1, (b,), generator=g)
        tm = torch.arange(ns)[None] < lengths[:, None]
        return FSANOutput(p, segment_scores(p, tm), tm)

    pos, neg = output(), output()
    cfg = FSANConfig(sc_map="p", weights="softmax", tau=0.1, match_score="sc", match_tau=0.0,
                     inner_form="sigmoid_sum", outer_form="lower", margin=0.2)  # fmt: skip
    ours = fsan_losses(SimpleNamespace(cfg=cfg), pos, neg, torch.ones(b, dtype=torch.bool)).total

    best = lambda out: out.segment_scores.flatten(1).amax(-1)  # noqa: E731 - eq. 7, hard max
    l_t = F.relu(0.2 - best(pos) + best(neg)).mean()  # eq. 6
    p_hat = (1 + pos.alignment_map) / 2
    w = segment_weights(pos.segment_scores, "softmax", 0.1)
    l_i = inner_loss(p_hat, pos.token_mask, w, "sigmoid_sum").mean()
    l_o = outer_loss(p_hat, pos.token_mask, w, "lower").mean()
    assert ours.item() == pytest.approx(((l_t + l_i + l_o) / 3).item(), rel=1e-5, abs=1e-6)
