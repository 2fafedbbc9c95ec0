"""FSAN: Fine-grained Semantic Alignment Network (paper §3).

Shapes: B batch, Ns tokens, Nv clips, d hidden. `token_mask` is True on real tokens.
Every video has exactly Nv clips (prepare pools to N_v), so only tokens are padded.

Where each equation of the paper is computed:

| eq. | what | function |
|---|---|---|
| 1-2 | multi-head attention | `models.layers.Attention` |
| 3-4 | cross-modal attention, both ways from the same inputs (ICIM, §3.2) | `models.layers.ICIMLayer` |
| 5 | alignment map P = cos(W^s S'', W^v V'') | `FSAN.forward` |
| 6 | matching loss L^t (margin, negative sentence and video) | `models.losses.fsan_losses` |
| 7 | S(V, S), the best segment's score | `models.losses.matching_score` |
| 8 | segment score SC_{s,e} of every segment | `models.segments.segment_scores` |
| 9-10 | inner loss L^i and its segment weights | `models.losses.inner_loss`, `models.segments.segment_weights` |
| 11-12 | outer loss L^o | `models.losses.outer_loss` |
| 13 | L = lambda_1 L^t + lambda_2 L^i + lambda_3 L^o | `models.losses.fsan_losses` |

Inference (§3.4): the highest SC is the answer; the top-k after NMS is
`models.segments.top_k_segments`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import FSANConfig
from models.layers import Dropout, ICIMLayer, MLPGrounding, SelfBlock
from models.segments import segment_scores


class FSANOutput(NamedTuple):
    alignment_map: Tensor  # P, (B, Ns, Nv), cosine in [-1, 1]
    segment_scores: Tensor  # SC, (B, Nv, Nv); NEG_INF where s > e
    token_mask: Tensor  # (B, Ns) bool


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
        # eq. 8 for training passes: train.compile_losses puts a torch.compile'd segment_scores
        # here (fsan_cli/train/step_options.py); evaluation always runs the eager one
        self.compiled_scores = None

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
            compiled = self.compiled_scores if self.training else None
            sc = (compiled or segment_scores)(self.sc_input(p, token_mask), token_mask)
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
