"""The network's blocks: attention (eq. 1-2), post-LN residual sublayers, the ICIM layer (§3.2,
eq. 3-4) and Table 4's MLP grounding head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import FSANConfig
from models.segments import NEG_INF, segment_geometry


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
        return (x * self.keep_mask(x)).to(x.dtype)  # bf16 stays bf16 (train.bf16_weights)

    def residual(self, x: Tensor, fx: Tensor) -> Tensor:
        """x + dropout(fx), in one pass on the CPU path."""
        if not self.cheap(fx):
            return x + super().forward(fx)
        return torch.addcmul(x, fx, self.keep_mask(fx)).to(x.dtype)


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
