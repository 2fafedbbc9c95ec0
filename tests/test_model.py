"""The network against plain-loop references of the paper's equations."""

from __future__ import annotations

import math

import pytest
import torch

from fsan_cli.train.step import TrainingPass
from models.config import FSANConfig
from models.fsan import FSAN
from models.losses import fsan_losses, inner_loss, negative_token_mask, outer_loss
from models.segments import NEG_INF, segment_scores, segment_weights, top_k_segments


def small_cfg(**kw) -> FSANConfig:
    base = dict(word_dim=12, feature_dim=10, clips=7, hidden=16, layers=2, heads=2, align_dim=8, max_tokens=9, dropout=0.0)
    base.update(kw)
    return FSANConfig(**base)


def random_inputs(b=3, ns=6, nv=7, vocab=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(b, ns, nv, generator=g) * 2 - 1
    lengths = torch.randint(1, ns + 1, (b,), generator=g)
    lengths[0] = ns
    mask = torch.arange(ns)[None] < lengths[:, None]
    return p, mask


# ---------------------------------------------------------------- plain-loop references


def sc_reference(p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 8 written as the paper writes it, one segment at a time."""
    b, _, nv = p.shape
    out = torch.full((b, nv, nv), NEG_INF, dtype=torch.float64)
    for n in range(b):
        rows = p[n][mask[n]].double()  # (Ns_real, Nv)
        for s in range(nv):
            for e in range(s, nv):
                inner = rows[:, s : e + 1].sum() / (rows.shape[0] * (e - s + 1))
                outside = [j for j in range(nv) if j < s or j > e]
                outer = sum(rows[:, j].min() for j in outside) / len(outside) if outside else 0.0
                out[n, s, e] = inner - outer
    return out


def inner_reference(p_hat, mask, w, form):
    b, _, nv = p_hat.shape
    out = torch.zeros(b, dtype=torch.float64)
    for n in range(b):
        rows = p_hat[n][mask[n]].double()
        for s in range(nv):
            for e in range(s, nv):
                seg = rows[:, s : e + 1].sum(1)
                if form == "sigmoid_sum":
                    per = -torch.sigmoid(seg).mean()
                else:
                    per = -torch.log(seg / (e - s + 1) + 1e-6).mean()
                out[n] += w[n, s, e].double() * per
    return out


def outer_reference(p_hat, mask, w, form):
    b, _, nv = p_hat.shape
    out = torch.zeros(b, dtype=torch.float64)
    for n in range(b):
        rows = p_hat[n][mask[n]].double()
        for s in range(nv):
            for e in range(s, nv):
                outside = [j for j in range(nv) if j < s or j > e]
                if not outside:
                    continue
                mins = torch.stack([rows[:, j].min() for j in outside])
                vals = -torch.log(1 - mins + 1e-6) if form == "lower" else -torch.log(mins + 1e-6)
                out[n] += w[n, s, e].double() * vals.mean()
    return out


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("nv", [1, 2, 7])
def test_segment_scores_match_loop_reference(seed, nv):
    p, mask = random_inputs(nv=nv, seed=seed)
    got = segment_scores(p, mask).double()
    torch.testing.assert_close(got, sc_reference(p, mask), atol=1e-5, rtol=1e-5)


def test_whole_video_segment_has_no_outside_term():
    p, mask = random_inputs(b=2, ns=4, nv=5)
    sc = segment_scores(p, mask)
    for n in range(2):
        expected = p[n][mask[n]].mean()
        torch.testing.assert_close(sc[n, 0, 4], expected)


@pytest.mark.parametrize("form", ["sigmoid_sum", "log_mean"])
@pytest.mark.parametrize("mode", ["softmax", "raw"])
def test_inner_loss_matches_loop_reference(form, mode):
    p, mask = random_inputs(seed=3)
    p_hat = (1 + p) / 2
    w = segment_weights(segment_scores(p, mask), mode, 0.1)
    torch.testing.assert_close(inner_loss(p_hat, mask, w, form).double(), inner_reference(p_hat, mask, w, form), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("form", ["lower", "literal"])
def test_outer_loss_matches_loop_reference(form):
    p, mask = random_inputs(seed=4)
    p_hat = (1 + p) / 2
    w = segment_weights(segment_scores(p, mask), "softmax", 0.1)
    torch.testing.assert_close(outer_loss(p_hat, mask, w, form).double(), outer_reference(p_hat, mask, w, form), atol=1e-5, rtol=1e-4)


def test_softmax_weights_sum_to_one_over_valid_segments_only():
    p, mask = random_inputs(seed=5)
    w = segment_weights(segment_scores(p, mask), "softmax", 0.1)
    torch.testing.assert_close(w.flatten(1).sum(-1), torch.ones(3))
    assert (w[:, torch.ones(7, 7, dtype=torch.bool).tril(-1)] == 0).all()


def test_negative_token_mask_drops_shared_words():
    pos = torch.tensor([[5, 6, 7, 0]])
    neg = torch.tensor([[6, 8, 9, 0]])
    assert negative_token_mask(pos, neg).tolist() == [[False, True, True, False]]
    # a negative made only of shared words keeps them rather than become empty
    assert negative_token_mask(pos, torch.tensor([[5, 6, 0, 0]])).tolist() == [[True, True, False, False]]


def make_model(seed=0, **kw) -> FSAN:
    torch.manual_seed(seed)
    return FSAN(small_cfg(**kw), torch.randn(20, 12)).eval()


def test_forward_shapes_and_invalid_segments():
    model = make_model()
    video = torch.randn(3, 7, 10)
    tokens = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0], [6, 7, 8, 9]])
    out = model(video, tokens)
    assert out.alignment_map.shape == (3, 4, 7)
    assert out.segment_scores.shape == (3, 7, 7)
    lower = torch.ones(7, 7, dtype=torch.bool).tril(-1)
    assert (out.segment_scores[:, lower] == NEG_INF).all()
    assert out.alignment_map.abs().max() <= 1 + 1e-5
    assert torch.isfinite(out.segment_scores.triu()).all()


def test_padding_does_not_change_scores():
    model = make_model()
    video = torch.randn(1, 7, 10)
    short = model(video, torch.tensor([[3, 4, 5]]))
    padded = model(video, torch.tensor([[3, 4, 5, 0, 0, 0]]))
    torch.testing.assert_close(short.segment_scores, padded.segment_scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(short.alignment_map, padded.alignment_map[:, :3], atol=1e-5, rtol=1e-5)


def test_one_sample_alone_equals_it_in_a_padded_batch():
    model = make_model()
    video = torch.randn(3, 7, 10)
    tokens = torch.tensor([[1, 2, 0, 0, 0], [4, 5, 6, 7, 8], [9, 0, 0, 0, 0]])
    batch = model(video, tokens)
    for i in range(3):
        n = int((tokens[i] != 0).sum())
        alone = model(video[i : i + 1], tokens[i : i + 1, :n])
        torch.testing.assert_close(alone.segment_scores[0], batch.segment_scores[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"cross_attention": False},
        {"inner_attention": False},
        {"grounding": "mlp"},
        {"sc_map": "p_hat"},
        {"sc_map": "centered"},
    ],
)
def test_every_trainable_parameter_gets_a_gradient(kw):
    model = make_model(**kw).train()
    video = torch.randn(4, 7, 10)
    tokens = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0], [6, 7, 8, 9], [10, 11, 12, 0]])
    neg = tokens.roll(1, 0)
    pos = model(video, tokens)
    neg_out = model(video, neg, negative_token_mask(tokens, neg))
    losses = fsan_losses(model, pos, neg_out, torch.ones(4, dtype=torch.bool))
    losses.total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, missing
    assert not model.embedding.weight.requires_grad


def test_ablation_switches_remove_their_parameters():
    full = {n for n, _ in make_model().named_parameters()}
    no_cross = {n for n, _ in make_model(cross_attention=False).named_parameters()}
    no_inner = {n for n, _ in make_model(inner_attention=False).named_parameters()}
    assert any("s_cross" in n for n in full) and not any("cross" in n for n in no_cross)
    assert any("s_self" in n for n in full) and not any("_self" in n for n in no_inner)


def nms_reference(sc: torch.Tensor, k: int, thr: float):
    nv = sc.shape[-1]
    cands = sorted(((float(sc[s, e]), s, e) for s in range(nv) for e in range(s, nv)), key=lambda t: -t[0])
    kept, rest = [], []
    for score, s, e in cands:
        ok = True
        for _, ks, ke in kept:
            inter = max(0, min(e + 1, ke + 1) - max(s, ks))
            union = max(e + 1, ke + 1) - min(s, ks)
            if inter / union > thr:
                ok = False
        (kept if ok else rest).append((score, s, e))
        if len(kept) == k:
            break
    while len(kept) < k:
        kept.append(rest.pop(0))
    return [(s, e) for _, s, e in kept]


@pytest.mark.parametrize("thr", [0.3, 0.5, 1.0])
def test_top_k_nms_matches_loop_reference(thr):
    torch.manual_seed(0)
    sc = torch.randn(5, 6, 6).masked_fill(torch.ones(6, 6, dtype=torch.bool).tril(-1), NEG_INF)
    segs, scores = top_k_segments(sc, 5, thr)
    for b in range(5):
        picks = nms_reference(sc[b], 5, thr)
        assert [tuple(x) for x in segs[b].tolist()] == picks
        assert torch.equal(scores[b], torch.stack([sc[b, s, e] for s, e in picks]))
    if thr == 1.0:  # nothing suppressed: the k best, best first
        assert (scores[:, :-1] >= scores[:, 1:]).all()
    assert math.isfinite(float(scores.min()))


def test_cpu_dropout_keeps_the_expectation_and_drop_rate():
    from models.layers import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.1).train()
    y = drop(torch.ones(200_000))
    assert abs((y == 0).float().mean().item() - 26 / 256) < 0.005  # p rounded to 26/256
    assert abs(y.mean().item() - 1.0) < 0.01
    assert torch.equal(drop.eval()(torch.ones(5)), torch.ones(5))


def test_cpu_dropout_residual_is_x_plus_dropout():
    """residual(x, fx) = x + dropout(fx) with the same mask draw: compare against forward on
    the same random state, and check its gradient is the mask times the scale."""
    from models.layers import Dropout

    drop = Dropout(0.25).train()
    x, fx = torch.randn(4, 7, 16), torch.randn(4, 7, 16, requires_grad=True)
    torch.manual_seed(3)
    out = drop.residual(x, fx)
    torch.manual_seed(3)
    ref = x + drop(fx.detach())
    assert torch.allclose(out, ref, atol=1e-6)
    out.sum().backward()
    kept = ref != x
    assert torch.allclose(fx.grad[kept], torch.full_like(fx.grad[kept], 256 / (256 - 64)))
    assert (fx.grad[~kept] == 0).all()
    assert torch.equal(drop.eval().residual(x, fx), x + fx)


def test_cpu_dropout_attention_matches_sdpa():
    """The CPU training path (explicit softmax + byte-mask dropout) equals scaled_dot_product_
    attention when nothing is dropped, masks padded keys the same way, and drops about p of
    the attention weights otherwise."""
    from models.layers import Attention

    torch.manual_seed(0)
    att = Attention(16, 2, 0.1, self_attention=False).train()
    q, k, v = (torch.randn(3, 2, 5, 8) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)[:, None, None, :]
    k, v = k[:, :, :4], v[:, :, :4]
    att.drop.p = 0.0  # the path itself, exactly
    att.drop.cheap = lambda x: False
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(att._cpu_dropout_attention(q, k, v, mask), ref, atol=1e-5)
    att.drop = type(att.drop)(0.5).train()
    ones = torch.ones(2000, 1, 1, 1)  # attention weights all 1 / Nk: each output = mean kept
    out = att._cpu_dropout_attention(torch.zeros(2000, 1, 1, 4), torch.zeros(2000, 1, 4, 4), ones.expand(-1, 1, 4, 1), None)
    assert abs((out == 0).float().mean().item() - 0.5**4) < 0.02  # all four weights dropped
    assert abs(out.mean().item() - 1.0) < 0.05  # expectation kept


def test_bf16_autocast_training_pass_keeps_the_map_in_fp32():
    """What CUDA training runs (bf16 autocast), here under the CPU's autocast: eq. 5's map and
    the segment scores stay fp32 (the losses' matmuls with fp32 indicators need it), and a
    step's losses and gradients are finite and close to fp32's."""
    torch.manual_seed(0)
    model = FSAN(FSANConfig(word_dim=8, feature_dim=12, clips=8, hidden=32, layers=1, heads=2,
                            align_dim=16, dropout=0.0, max_tokens=6), torch.randn(30, 8)).train()
    video, tokens = torch.randn(4, 8, 12), torch.randint(1, 30, (4, 6))
    neg = tokens.roll(1, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(video, tokens)
    assert out.alignment_map.dtype == torch.float32 and out.segment_scores.dtype == torch.float32
    losses = {}
    for bf16 in (False, True):
        model.zero_grad()
        loss = TrainingPass(model, bf16)(video, tokens, neg, torch.ones(4, dtype=torch.bool), None,
                                         torch.tensor(1.0))
        loss.total.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        losses[bf16] = float(loss.total.detach())
    assert losses[True] == pytest.approx(losses[False], rel=0.05)
