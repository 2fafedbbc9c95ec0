"""Our training step against a plain PyTorch version of the same model, timed side by side.

    python -m benchmarks.speed.plain_reference            # d 128, 2 layers, N_v 32, batch 64
    python -m benchmarks.speed.plain_reference --hidden 512 --layers 6 --heads 8 --clips 64 \
        --batch-size 32 --steps 2 --rounds 3              # the paper config
    python -m benchmarks.speed.plain_reference --check-only   # the loss check alone, seconds

DESIGN.md's CPU anchors (4.6 samples/s at the paper config, 171 at d 128 / 2 layers / N_v 32 /
batch 64) come from a plain sketch measured on this machine at another time; a shared machine's
speed drifts by 10-30% over minutes, so an absolute figure from today cannot be compared with
them fairly. This script builds the plain version here (stock nn.MultiheadAttention and
nn.Dropout, every loss by prefix sums over the full N_v x N_v square, positive and negative
pass, AdamW) and alternates timed windows of it with windows of `fsan train`'s step
(`fsan_cli.train.step.training_step` through `TrainingPass`) at equal shapes: each query exactly --tokens
long, no (V-, S) pass. It prints both medians and their ratio, which the drift cancels out of,
after a first `# record:` line saying how they were made (benchmarks/record.py).

The comparison is fair only if the plain losses are ours: before timing, it checks that
plain_losses equals `fsan_losses` in the paper's form (SC on P, softmax weights, hard max of SC,
sigmoid-sum inner, lower outer, margin 0.2) on random maps, and exits with status 1 if not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.record import header
from fsan_cli.core.settings import load_settings
from fsan_cli.train.step import TrainingPass, make_optimizer, training_step
from models.config import FSANConfig
from models.fsan import FSAN, FSANOutput
from models.losses import fsan_losses
from models.segments import segment_scores


class PlainBlock(nn.Module):
    """Post-LN attention (self or cross) + FFN, from stock modules."""

    def __init__(self, d: int, heads: int, p: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, dropout=p, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(p), nn.Linear(4 * d, d))
        self.n1, self.n2, self.drop = nn.LayerNorm(d), nn.LayerNorm(d), nn.Dropout(p)

    def forward(self, x, y, pad):  # pad: True on padded keys, as MultiheadAttention wants
        x = self.n1(x + self.drop(self.attn(x, y, y, key_padding_mask=pad, need_weights=False)[0]))
        return self.n2(x + self.drop(self.ffn(x)))


class Plain(nn.Module):
    def __init__(self, words: torch.Tensor, feature_dim: int, d: int, layers: int, heads: int,
                 clips: int, p: float) -> None:  # fmt: skip
        super().__init__()
        self.emb = nn.Embedding.from_pretrained(words, freeze=True, padding_idx=0)
        self.tp, self.vp = nn.Linear(words.shape[1], d), nn.Linear(feature_dim, d)
        self.tpos, self.vpos = nn.Parameter(torch.zeros(32, d)), nn.Parameter(torch.zeros(clips, d))
        self.text = PlainBlock(d, heads, p)
        self.layers = nn.ModuleList(
            nn.ModuleList(PlainBlock(d, heads, p) for _ in range(4)) for _ in range(layers)
        )  # per layer: text->video, video->text, text self, video self
        self.ws, self.wv = nn.Linear(d, 512, bias=False), nn.Linear(d, 512, bias=False)
        self.drop = nn.Dropout(p)

    def forward(self, video, tokens):
        pad = tokens == 0
        s = self.drop(self.tp(self.emb(tokens)) + self.tpos[: tokens.shape[1]])
        s = self.text(s, s, pad)
        v = self.drop(self.vp(video) + self.vpos)
        for s_cross, v_cross, s_self, v_self in self.layers:
            s, v = s_cross(s, v, None), v_cross(v, s, pad)  # both from the same inputs
            s, v = s_self(s, s, pad), v_self(v, v, None)
        p = F.normalize(self.ws(s), dim=-1) @ F.normalize(self.wv(v), dim=-1).transpose(1, 2)
        return p, ~pad  # (B, Ns, Nv), token mask


def prefix(x):  # sums over every segment [s, e] of the last axis: (..., N) -> (..., N, N)
    c = F.pad(x.cumsum(-1), (1, 0))
    return c[..., None, 1:] - c[..., :-1, None]


def plain_losses(p, tm, neg_p, neg_tm, margin=0.2, tau=0.1):
    nv = p.shape[-1]
    idx = torch.arange(nv)
    length = (idx[None, :] - idx[:, None] + 1).float()
    valid = length > 0

    def sc(p, tm):
        tmf = tm.float()
        inner = prefix((p * tmf[:, :, None]).sum(1)) / (tmf.sum(1)[:, None, None] * length.clamp_min(1))
        weak = p.masked_fill(~tm[:, :, None], 2.0).amin(1)
        n_out = nv - length
        outer = (weak.sum(-1)[:, None, None] - prefix(weak)) / n_out.clamp_min(1) * (n_out > 0)
        return (inner - outer).masked_fill(~valid, -1e4)

    sc_pos = sc(p, tm)
    l_t = F.relu(margin - sc_pos.flatten(1).amax(-1) + sc(neg_p, neg_tm).flatten(1).amax(-1)).mean()
    p_hat = (1 + p) / 2
    w = torch.softmax((sc_pos.detach() / tau).flatten(1), -1).view_as(sc_pos)
    tmf = tm.float()
    per_token = torch.sigmoid(prefix(p_hat))  # (B, Ns, Nv, Nv): the full square
    l_i = -(w * ((per_token * tmf[:, :, None, None]).sum(1) / tmf.sum(1)[:, None, None])).sum((1, 2))
    weak = -torch.log(1 - p_hat.masked_fill(~tm[:, :, None], 2.0).amin(1) + 1e-6)
    n_out = nv - length
    out = (weak.sum(-1)[:, None, None] - prefix(weak)) / n_out.clamp_min(1) * (n_out > 0)
    l_o = (w * out.masked_fill(~valid, 0)).sum((1, 2))
    return (l_t + l_i.mean() + l_o.mean()) / 3


def _random_output(g: torch.Generator, b: int = 5, ns: int = 7, nv: int = 12) -> FSANOutput:
    p = torch.rand(b, ns, nv, generator=g) * 2 - 1
    lengths = torch.randint(1, ns + 1, (b,), generator=g)
    tm = torch.arange(ns)[None] < lengths[:, None]
    return FSANOutput(p, segment_scores(p, tm), tm)


def check_losses(seeds=(0, 1, 2)) -> list[str]:
    """plain_losses against fsan_losses in the paper's form, on random maps (batch 5, 7 tokens
    at most, 12 clips); returns one line per seed where they disagree."""
    cfg = FSANConfig(sc_map="p", weights="softmax", tau=0.1, match_score="sc", match_tau=0.0,
                     inner_form="sigmoid_sum", outer_form="lower", margin=0.2)  # fmt: skip
    failures = []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        pos, neg = _random_output(g), _random_output(g)
        ok = torch.ones(pos.alignment_map.shape[0], dtype=torch.bool)
        ours = fsan_losses(SimpleNamespace(cfg=cfg), pos, neg, ok).total.item()
        plain = plain_losses(pos.alignment_map, pos.token_mask, neg.alignment_map, neg.token_mask).item()
        if abs(plain - ours) > max(1e-6, 1e-5 * abs(ours)):  # pytest.approx(rel=1e-5, abs=1e-6)
            failures.append(f"seed {seed}: plain losses {plain:.7f}, fsan_losses {ours:.7f}")
    return failures


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed window")
    ap.add_argument("--rounds", type=int, default=6, help="windows of each, alternating")
    ap.add_argument("--check-only", action="store_true",
                    help="check that the plain losses are ours, and stop there")
    args = ap.parse_args()
    print(header(__spec__.name), flush=True)
    failures = check_losses()
    if failures:
        print("the plain losses are not ours, so the timing would not be fair:", *failures,
              sep="\n  ", file=sys.stderr)
        sys.exit(1)
    print("plain losses = fsan_losses in the paper's form (3 seeds)", flush=True)
    if args.check_only:
        return
    torch.manual_seed(0)
    b, nv, d = args.batch_size, args.clips, args.hidden
    words = torch.randn(5000, 300)
    words[0] = 0
    features = torch.randn(4 * b, nv, 500)
    tokens = torch.randint(2, 5000, (8 * b, args.tokens))
    vids = torch.randint(0, 4 * b, (8 * b,))

    plain = Plain(words, 500, d, args.layers, args.heads, nv, args.dropout).train()
    plain_opt = torch.optim.AdamW([q for q in plain.parameters() if q.requires_grad], lr=1e-4)

    def plain_step() -> None:
        idx, neg = torch.randint(0, 8 * b, (b,)), torch.randint(0, 8 * b, (b,))
        video = features[vids[idx]]
        p, tm = plain(video, tokens[idx])
        neg_p, neg_tm = plain(video, tokens[neg])
        loss = plain_losses(p, tm, neg_p, neg_tm)
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        plain_opt.step()

    sets = [f"model.hidden={d}", f"model.layers={args.layers}", f"model.heads={args.heads}",
            f"data.clips={nv}", f"train.batch_size={b}", f"model.dropout={args.dropout}",
            "loss.negative_video=false"]  # fmt: skip
    cfg = load_settings("activitynet", overrides=sets)
    model = FSAN(cfg.model_config(300, 500), words).train()
    opt = make_optimizer(model, cfg.train, torch.device("cpu"))
    runner = TrainingPass(model, False)

    def our_step() -> None:
        idx, neg = torch.randint(0, 8 * b, (b,)), torch.randint(0, 8 * b, (b,))
        losses = training_step(model, features, tokens, vids, idx, neg, torch.device("cpu"), runner=runner)
        opt.zero_grad(set_to_none=True)
        losses.total.backward()
        opt.step()

    rates: dict[str, list[float]] = {"plain": [], "fsan": []}
    for step in (plain_step, our_step):
        for _ in range(2):  # warm-up
            step()
    for _ in range(args.rounds):
        for name, step in (("plain", plain_step), ("fsan", our_step)):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            rates[name].append(args.steps * b / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"d {d}, {args.layers} layers, {args.heads} heads, N_v {nv}, batch {b}, {args.tokens} tokens, "
          f"dropout {args.dropout}, {torch.get_num_threads()} threads, {args.rounds} windows of {args.steps} steps each")  # fmt: skip
    for k, v in rates.items():
        print(f"{k:>6}: median {med[k]:.1f} samples/s (range {min(v):.1f}-{max(v):.1f})")
    print(f" ratio: fsan / plain = {med['fsan'] / med['plain']:.2f}")


if __name__ == "__main__":
    main()
