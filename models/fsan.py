"""FSAN: Fine-grained Semantic Alignment Network (paper §3).

Shapes: B batch, Ns tokens, Nv clips, d hidden. `token_mask` is True on real tokens.
Every video has exactly Nv clips (prepare pools to N_v), so only tokens are padded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NEG_INF = -1e4  # finite "minus infinity": stays finite in bf16 and under softmax


@dataclass
class FSANConfig:
    """Every ambiguous choice of the paper is a setting (DESIGN.md, "The model")."""

    word_dim: int = 300
    feature_dim: int = 500
    clips: int = 64  # N_v
    hidden: int = 512  # d (paper §4.2)
    layers: int = 6  # ICIM layers (paper §3.2)
    heads: int = 8
    dropout: float = 0.1
    text_layers: int = 1
    align_dim: int = 512  # d_i of eq. 5
    max_tokens: int = 32
    # Table 4 ablation switches
    cross_attention: bool = True
    inner_attention: bool = True
    grounding: str = "alignment"  # "alignment" (§3.4) | "mlp" (w/o grounding module)
    # eq. 8 reads: "p" raw cosine | "p_hat" (1 + P) / 2 | "centered" P minus each token's mean
    sc_map: str = "p"
    # eq. 10/12 weights: "softmax" = softmax(SC / tau) detached | "raw" = SC as in the paper
    weights: str = "softmax"
    tau: float = 0.1
    # eq. 9: "sigmoid_sum" (paper, on P̂) | "log_mean" = -log(mean of P̂ inside)
    inner_form: str = "sigmoid_sum"
    # eq. 11: "lower" = -log(1 - min P̂) (the text's intent) | "literal" = -log(min P̂)
    outer: str = "lower"
    margin: float = 0.2  # delta of eq. 6
    # eq. 7 takes a hard max over segments; match_tau > 0 uses tau * logsumexp(SC / tau), a
    # smooth max whose gradient reaches every good segment, not only the argmax
    match_tau: float = 0.0
    # what S(V, S) of eq. 6-7 reads: "sc" = the best SC (paper) | "inner" = the absolute mean
    # response of all tokens (raw P) inside the best-SC segment, so a caption must align
    # *positively* with its moment; a centred SC alone cannot tell a moment from its complement
    match_score: str = "sc"
    # also contrast the caption on another video, (V^-, S), beside (V, S^-) of eq. 6
    negative_video: bool = False
    w_matching: float = 1 / 3  # lambda_1..3 of eq. 13
    w_inner: float = 1 / 3
    w_outer: float = 1 / 3
    sap_losses: bool = True  # Table 4: False keeps only L^t

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FSANConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FSANOutput(NamedTuple):
    alignment_map: Tensor  # P, (B, Ns, Nv), cosine in [-1, 1]
    segment_scores: Tensor  # SC, (B, Nv, Nv); NEG_INF where s > e
    token_mask: Tensor  # (B, Ns) bool


class Dropout(nn.Dropout):
    """nn.Dropout with a cheaper CPU mask: torch's CPU bernoulli_ draws one random number per
    element and took a third of a training step at small sizes. Here one 64-bit draw gives eight
    random bytes; an element is dropped when its byte < t = round(256 p), and kept ones are scaled
    by 256 / (256 - t), so the expectation is exact (p is rounded to a multiple of 1/256).
    The GPU path is the stock kernel."""

    def cheap(self, x: Tensor) -> bool:
        """Whether this call takes the byte-mask path (CPU training with p > 0)."""
        return self.training and self.p > 0 and not x.is_cuda

    def keep_mask(self, x: Tensor) -> Tensor:
        """The mask as x's dtype: 0 for dropped elements, 256 / (256 - t) for kept ones (a float
        mask makes the multiply and its backward same-dtype ops: 2x faster than a bool one)."""
        t = round(256 * self.p)
        n = x.numel()
        draws = torch.randint(-(2**63), 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64, device=x.device)
        keep = draws.view(torch.uint8)[:n].view(x.shape) >= t
        return keep * (256.0 / (256 - t))

    def forward(self, x: Tensor) -> Tensor:
        if not self.cheap(x):
            return super().forward(x)
        return x * self.keep_mask(x)

    def residual(self, x: Tensor, fx: Tensor) -> Tensor:
        """x + dropout(fx), in one pass on the CPU path."""
        if not self.cheap(fx):
            return x + super().forward(fx)
        return torch.addcmul(x, fx, self.keep_mask(fx))


class Attention(nn.Module):
    """Multi-head attention (eq. 1-2) on scaled_dot_product_attention; fused QKV for self-attention."""

    def __init__(self, d: int, heads: int, dropout: float, self_attention: bool) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.drop = Dropout(dropout)
        self.self_attention = self_attention
        if self_attention:
            self.qkv = nn.Linear(d, 3 * d)
        else:
            self.q = nn.Linear(d, d)
            self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)  # W^M

    def forward(self, x: Tensor, y: Tensor, key_mask: Tensor | None) -> Tensor:
        b, n, d = x.shape
        h = self.heads
        if self.self_attention:
            q, k, v = self.qkv(x).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)  # (B, h, N, d/h)
        else:
            q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
            k, v = self.kv(y).view(b, y.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, Nk)
        if self.drop.cheap(x):
            a = self._cpu_dropout_attention(q, k, v, mask)
        else:
            a = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
            )  # (B, h, N, d/h)
        return self.out(a.transpose(1, 2).reshape(b, n, d))

    def _cpu_dropout_attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """What scaled_dot_product_attention computes with dropout_p, but with the byte-mask
        Dropout: on a CPU, SDPA with dropout leaves its fused kernel for a path that draws one
        random number per attention weight (measured 14% of a small training step)."""
        w = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, h, N, Nk)
        if mask is not None:
            w = w.masked_fill(~mask, float("-inf"))
        w = self.drop(torch.softmax(w, -1))
        return w @ v


class Sublayer(nn.Module):
    """Post-LN residual block: LN(f(x) + x), as in eq. 3-4."""

    def __init__(self, d: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor, fx: Tensor) -> Tensor:
        return self.norm(self.drop.residual(x, fx))


class FeedForward(nn.Module):
    def __init__(self, d: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), Dropout(dropout), nn.Linear(4 * d, d))
        self.res = Sublayer(d, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.res(x, self.net(x))


class SelfBlock(nn.Module):
    """Self-attention + FFN (text encoder layer; inner-modal half of an ICIM layer)."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = Attention(d, heads, dropout, self_attention=True)
        self.res = Sublayer(d, dropout)
        self.ffn = FeedForward(d, dropout)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        return self.ffn(self.res(x, self.attn(x, x, key_mask)))


class ICIMLayer(nn.Module):
    """One ICIM layer (§3.2): cross-modal attention both ways from the same inputs, FFN
    (eq. 3-4), then inner-modal self-attention per modality, FFN."""

    def __init__(self, cfg: FSANConfig) -> None:
        super().__init__()
        d, h, p = cfg.hidden, cfg.heads, cfg.dropout
        self.cross = cfg.cross_attention
        self.inner = cfg.inner_attention
        if self.cross:
            self.s_cross, self.v_cross = Attention(d, h, p, False), Attention(d, h, p, False)
            self.s_res, self.v_res = Sublayer(d, p), Sublayer(d, p)
            self.s_ffn, self.v_ffn = FeedForward(d, p), FeedForward(d, p)
        if self.inner:
            self.s_self, self.v_self = SelfBlock(d, h, p), SelfBlock(d, h, p)

    def forward(self, s: Tensor, v: Tensor, token_mask: Tensor) -> tuple[Tensor, Tensor]:
        if self.cross:
            s2 = self.s_ffn(self.s_res(s, self.s_cross(s, v, None)))  # eq. 3
            v2 = self.v_ffn(self.v_res(v, self.v_cross(v, s, token_mask)))  # eq. 4
            s, v = s2, v2
        if self.inner:
            s = self.s_self(s, token_mask)
            v = self.v_self(v, None)
        return s, v


def masked_token_min(p: Tensor, token_mask: Tensor) -> Tensor:
    """min over real tokens of P, per clip: (B, Ns, Nv) -> (B, Nv)."""
    return p.masked_fill(~token_mask[:, :, None], float("inf")).amin(1)


def segment_sums(x: Tensor) -> Tensor:
    """Sums of x over every clip segment [s, e] by prefix sums: (..., Nv) -> (..., Nv, Nv).

    Entry [s, e] is sum_{j=s..e} x_j for s <= e; entries with s > e are negative lengths'
    sums and must be masked by the caller.
    """
    c = F.pad(x.cumsum(-1), (1, 0))  # (..., Nv + 1)
    return c[..., None, 1:] - c[..., :-1, None]  # [s, e] = c[e + 1] - c[s]


def segment_geometry(nv: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(valid (Nv, Nv) bool for s <= e, length (Nv, Nv) = e - s + 1 as float)."""
    idx = torch.arange(nv, device=device)
    length = (idx[None, :] - idx[:, None] + 1).float()
    return length > 0, length


def segment_inner_mean(p: Tensor, token_mask: Tensor) -> Tensor:
    """First term of eq. 8: mean of P over real tokens and the clips of [s, e], (B, Nv, Nv)."""
    _, length = segment_geometry(p.shape[-1], p.device)
    tm = token_mask.to(p.dtype)
    col = (p * tm[:, :, None]).sum(1)  # (B, Nv)
    return segment_sums(col) / (tm.sum(1).clamp_min(1)[:, None, None] * length.clamp_min(1))


def segment_scores(p: Tensor, token_mask: Tensor) -> Tensor:
    """SC_{s,e} of eq. 8 for all segments at once: (B, Ns, Nv) -> (B, Nv, Nv).

    Mean of P over real tokens and clips inside, minus the mean over outside clips of each
    clip's weakest token response; 0 outside term for the whole video; NEG_INF where s > e.
    """
    nv = p.shape[-1]
    valid, length = segment_geometry(nv, p.device)
    inner = segment_inner_mean(p, token_mask)
    weakest = masked_token_min(p, token_mask)  # (B, Nv)
    outside = weakest.sum(-1)[:, None, None] - segment_sums(weakest)
    n_out = nv - length
    outer = torch.where(n_out > 0, outside / n_out.clamp_min(1), torch.zeros_like(outside))
    return (inner - outer).masked_fill(~valid, NEG_INF)


def segment_weights(sc: Tensor, mode: str, tau: float) -> Tensor:
    """Weights of eq. 10/12 over valid segments, (B, Nv, Nv), detached."""
    sc = sc.detach()
    valid = sc > NEG_INF / 2
    if mode == "softmax":
        return torch.softmax((sc / tau).flatten(1), -1).view_as(sc)
    if mode == "raw":
        return sc.masked_fill(~valid, 0.0)
    raise ValueError(f"unknown weights mode {mode!r}")


def segment_indicator(nv: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The Nv (Nv + 1) / 2 valid segments s <= e, row-major: (U (Nv, S) with U[j, k] = 1 when
    clip j lies in segment k, flat (S,) index of each into an (Nv, Nv) map, length (S,))."""
    s, e = torch.triu_indices(nv, nv, device=device)
    j = torch.arange(nv, device=device)[:, None]
    return ((j >= s) & (j <= e)).float(), s * nv + e, (e - s + 1).float()


def inner_loss(p_hat: Tensor, token_mask: Tensor, weights: Tensor, form: str) -> Tensor:
    """L^i (eq. 9-10), per sample (B,): raise every token's response inside likely segments.

    The (B, Ns, segments) sums are one matmul with the segment indicator over the valid
    segments only, and the token mean is a second one: this term reads the largest tensor of
    a training step (7x faster than prefix sums over the full Nv x Nv square on a CPU)."""
    u, flat, length = segment_indicator(p_hat.shape[-1], p_hat.device)
    tm = token_mask.to(p_hat.dtype)
    sums = p_hat @ u  # (B, Ns, S): each token's P-hat summed over each segment
    if form == "sigmoid_sum":
        per_token = torch.sigmoid(sums)  # the loss is minus this
    elif form == "log_mean":  # -log(sums / length + 1e-6) = log(length) - log(sums + 1e-6 length)
        per_token = torch.log(sums + 1e-6 * length)
    else:
        raise ValueError(f"unknown inner_form {form!r}")
    mean = (tm[:, None, :] @ per_token)[:, 0] / tm.sum(1, keepdim=True).clamp_min(1)  # (B, S)
    per_seg = torch.log(length) - mean if form == "log_mean" else -mean
    return (weights.flatten(1)[:, flat] * per_seg).sum(-1)


def outer_loss(p_hat: Tensor, token_mask: Tensor, weights: Tensor, form: str) -> Tensor:
    """L^o (eq. 11-12), per sample (B,): lower each outside clip's weakest token response."""
    nv = p_hat.shape[-1]
    valid, length = segment_geometry(nv, p_hat.device)
    weakest = masked_token_min(p_hat, token_mask)  # (B, Nv)
    if form == "lower":
        per_clip = -torch.log(1 - weakest + 1e-6)
    elif form == "literal":
        per_clip = -torch.log(weakest + 1e-6)
    else:
        raise ValueError(f"unknown outer form {form!r}")
    outside = per_clip.sum(-1)[:, None, None] - segment_sums(per_clip)
    n_out = nv - length
    per_seg = torch.where(n_out > 0, outside / n_out.clamp_min(1), torch.zeros_like(outside))
    return (weights * per_seg.masked_fill(~valid, 0.0)).flatten(1).sum(-1)


class MLPGrounding(nn.Module):
    """Table 4 "w/o grounding module": attention pooling on V'' and a 3-layer MLP that scores
    every (s, e) segment (paper §4.4)."""

    def __init__(self, cfg: FSANConfig) -> None:
        super().__init__()
        d, nv = cfg.hidden, cfg.clips
        self.pool = nn.Linear(d, 1)
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, nv * nv))

    def forward(self, v: Tensor) -> Tensor:
        a = torch.softmax(self.pool(v), dim=1)  # (B, Nv, 1)
        pooled = (a * v).sum(1)  # (B, d)
        nv = v.shape[1]
        sc = torch.tanh(self.mlp(pooled)).view(-1, nv, nv)
        valid, _ = segment_geometry(nv, v.device)
        return sc.masked_fill(~valid, NEG_INF)


class FSAN(nn.Module):
    def __init__(self, cfg: FSANConfig, word_vectors: Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden
        # Frozen word vectors (GloVe, paper §3.1) live in the model so checkpoints rebuild it.
        vocab = word_vectors.shape[0] if word_vectors is not None else 2
        self.embedding = nn.Embedding(vocab, cfg.word_dim, padding_idx=0)
        if word_vectors is not None:
            self.embedding.weight.data.copy_(word_vectors)
        self.embedding.weight.requires_grad_(False)
        self.text_proj = nn.Linear(cfg.word_dim, d)
        self.text_pos = nn.Parameter(torch.randn(cfg.max_tokens, d) * 0.02)
        self.text_encoder = nn.ModuleList(SelfBlock(d, cfg.heads, cfg.dropout) for _ in range(cfg.text_layers))
        self.video_proj = nn.Linear(cfg.feature_dim, d)
        self.video_pos = nn.Parameter(torch.randn(cfg.clips, d) * 0.02)
        self.drop = Dropout(cfg.dropout)
        self.icim = nn.ModuleList(ICIMLayer(cfg) for _ in range(cfg.layers))
        self.w_s = nn.Linear(d, cfg.align_dim, bias=False)  # W^s of eq. 5
        self.w_v = nn.Linear(d, cfg.align_dim, bias=False)  # W^v of eq. 5
        self.mlp_grounding = MLPGrounding(cfg) if cfg.grounding == "mlp" else None

    def encode_text(self, tokens: Tensor, token_mask: Tensor) -> Tensor:
        n = tokens.shape[1]
        s = self.text_proj(self.embedding(tokens)) + self.text_pos[:n]  # (B, Ns, d)
        s = self.drop(s)
        for block in self.text_encoder:
            s = block(s, token_mask)
        return s

    def encode_video(self, video: Tensor) -> Tensor:
        return self.drop(self.video_proj(video) + self.video_pos[: video.shape[1]])  # (B, Nv, d)

    def forward(self, video: Tensor, tokens: Tensor, token_mask: Tensor | None = None) -> FSANOutput:
        """video (B, Nv, D_v) float, tokens (B, Ns) long (0 = padding)."""
        if token_mask is None:
            token_mask = tokens != 0
        s = self.encode_text(tokens, token_mask)
        v = self.encode_video(video)
        for layer in self.icim:
            s, v = layer(s, v, token_mask)
        # eq. 5: P = Norm(W^s S'') . Norm(W^v V''), in fp32 for the losses' logs and sums: under
        # autocast (bf16 training on CUDA) the product would otherwise come out in bf16
        ps = F.normalize(self.w_s(s).float(), dim=-1)
        pv = F.normalize(self.w_v(v).float(), dim=-1)
        with torch.autocast(ps.device.type, enabled=False):
            p = ps @ pv.transpose(1, 2)  # (B, Ns, Nv)
        if self.mlp_grounding is not None:
            sc = self.mlp_grounding(v).float()
        else:
            sc = segment_scores(self.sc_input(p, token_mask), token_mask)
        return FSANOutput(p, sc, token_mask)

    def sc_input(self, p: Tensor, token_mask: Tensor) -> Tensor:
        mode = self.cfg.sc_map
        if mode == "p":
            return p
        if mode == "p_hat":
            return (1 + p) / 2
        if mode == "centered":
            return p - p.mean(-1, keepdim=True)
        raise ValueError(f"unknown sc_map {mode!r}")


class Losses(NamedTuple):
    total: Tensor
    matching: Tensor
    inner: Tensor
    outer: Tensor


def matching_score(out: FSANOutput, cfg: FSANConfig) -> Tensor:
    """S(V, S) of eq. 7, (B,): the best segment's SC (hard max, or tau * logsumexp when
    match_tau > 0); with match_score="inner", the raw inner mean of P at that segment (soft:
    weighted by softmax(SC / match_tau))."""
    flat = out.segment_scores.flatten(1)
    if cfg.match_score == "sc":
        if cfg.match_tau > 0:
            return cfg.match_tau * torch.logsumexp(flat / cfg.match_tau, -1)
        return flat.amax(-1)
    if cfg.match_score != "inner":
        raise ValueError(f"unknown match_score {cfg.match_score!r}")
    inner = segment_inner_mean(out.alignment_map, out.token_mask).flatten(1)
    if cfg.match_tau > 0:
        w = torch.softmax(flat / cfg.match_tau, -1)
    else:
        w = F.one_hot(flat.argmax(-1), flat.shape[-1]).to(inner.dtype)
    return (w * inner).sum(-1)


def negative_token_mask(pos_tokens: Tensor, neg_tokens: Tensor) -> Tensor:
    """Real tokens of the negative sentence that do not occur in the positive (§3.3)."""
    shared = (neg_tokens[:, :, None] == pos_tokens[:, None, :]).any(-1)  # (B, Ns-)
    mask = (neg_tokens != 0) & ~shared
    # a negative whose every token also occurs in the positive keeps its tokens (no empty rows)
    return torch.where(mask.any(1, keepdim=True), mask, neg_tokens != 0)


def fsan_losses(
    model: FSAN,
    pos: FSANOutput,
    neg: FSANOutput,
    neg_ok: Tensor,
    neg_video: FSANOutput | None = None,
    sap_scale: float = 1.0,
) -> Losses:
    """Eq. 13 from the positive pass (V, S) and the negative pass (V, S^-).

    neg_ok (B,) bool marks samples whose negative really comes from another video;
    neg_video is the optional pass (V^-, S); sap_scale ramps the SAP losses in (0..1).
    """
    cfg = model.cfg
    s_pos = matching_score(pos, cfg)
    gap = F.relu(cfg.margin - s_pos + matching_score(neg, cfg))
    if neg_video is not None:
        gap = gap + F.relu(cfg.margin - s_pos + matching_score(neg_video, cfg))
    okf = neg_ok.float()
    l_t = (gap * okf).sum() / okf.sum().clamp_min(1)  # eq. 6
    zero = l_t.new_zeros(())
    if not cfg.sap_losses:
        return Losses(l_t, l_t, zero, zero)
    p_hat = (1 + pos.alignment_map) / 2  # DESIGN.md decision: losses on P̂ in [0, 1]
    w = segment_weights(pos.segment_scores, cfg.weights, cfg.tau)
    l_i = inner_loss(p_hat, pos.token_mask, w, cfg.inner_form).mean()
    l_o = outer_loss(p_hat, pos.token_mask, w, cfg.outer).mean()
    total = cfg.w_matching * l_t + sap_scale * (cfg.w_inner * l_i + cfg.w_outer * l_o)
    return Losses(total, l_t, l_i, l_o)
