"""Issue 22's speed options (fsan_cli/train/step_options.py), each against the path it replaces:
bf16 weights with fp32 masters against autocast, compiled losses and segment scores against
eager ones, DDP's static graph against one process (tests/test_distributed.py runs gloo).

The CUDA tests run where a GPU is (benchmarks/tools/gpu_check.sh runs them on a lent one)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from fsan_cli.app import app
from fsan_cli.core.settings import TrainSettings, load_settings
from fsan_cli.train import loop as training
from fsan_cli.train import resident
from fsan_cli.train.cuda_graph import use_cuda_graph
from fsan_cli.train.distributed import Dist
from fsan_cli.train.step import TrainingPass, make_optimizer
from fsan_cli.train.step_options import FastPass, MasterWeights, describe, training_pass
from models.fsan import FSAN
from models.losses import fsan_losses
from models.segments import segment_scores
from tests.helpers import tiny_synthetic

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SMALL = [
    "model.hidden=32",
    "model.layers=1",
    "model.heads=2",
    "model.align_dim=16",
    "data.clips=8",
    "train.batch_size=8",
    "model.dropout=0.0",
]


def small_run(
    sets: list[str], device: torch.device, autocast: bool = False, captured: bool = False
):
    """A training Run on random data (40 queries of 10 videos), built as `fsan train` builds it:
    the pass from training_pass, or the plain TrainingPass under autocast when `autocast`."""
    cfg = load_settings("activitynet", overrides=[*SMALL, *sets])
    mc = cfg.model_config(12, 20)
    torch.manual_seed(0)
    model = FSAN(mc, torch.randn(50, 12)).to(device).train()
    g = torch.Generator().manual_seed(1)
    features = torch.randn(10, mc.clips, 20, generator=g).to(device)
    lengths = torch.randint(2, 9, (40,), generator=g)
    tokens = torch.randint(2, 50, (40, 8), generator=g)
    tokens = tokens.masked_fill(torch.arange(8)[None] >= lengths[:, None], 0).to(device)
    vids = torch.randint(0, 10, (40,), generator=g).to(device)
    data = resident.TrainingData(features, tokens, vids, [])
    opt = make_optimizer(model, cfg.train, device, captured)
    masters = MasterWeights(model) if cfg.train.bf16_weights else None
    runner = (
        TrainingPass(model, True) if autocast else training_pass(model, cfg.train, device, masters)
    )
    run = training.Run(
        model, runner, opt, None, data, cfg, None, None, device, Dist(), masters=masters
    )
    if captured:
        training.capture_steps(run)
    return run


def relative_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = sum(float((x.float() - y.float()).pow(2).sum()) for x, y in zip(a, b, strict=True))
    return (num / sum(float(x.float().pow(2).sum()) for x in a)) ** 0.5


def test_bf16_weights_step_follows_the_autocast_step():
    """One step on bf16 weights: the losses and the fp32 masters' gradients are autocast's
    within bf16's precision; Adam steps the fp32 masters and the bf16 copy is their rounding."""
    cpu = torch.device("cpu")
    ref = small_run([], cpu, autocast=True)
    fast = small_run(["train.bf16_weights=true"], cpu)
    assert isinstance(fast.runner, FastPass) and fast.runner.model is fast.masters.work
    assert all(p.dtype == torch.bfloat16 for p in fast.masters.work.parameters())
    before = [p.detach().clone() for p in fast.model.parameters()]
    idx, neg = torch.arange(8), torch.arange(20, 28)
    a = training.step_body(ref, idx, neg, 1.0)
    b = training.step_body(fast, idx, neg, 1.0)
    torch.testing.assert_close(b, a, rtol=3e-2, atol=3e-3)
    grads_a = [p.grad for p in ref.model.parameters() if p.requires_grad]
    grads_b = [p.grad for p in fast.model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 for g in grads_b)
    assert relative_error(grads_a, grads_b) < 0.08  # measured 0.04 (fp32 vs autocast: 0.04)
    assert all(p.grad is None for p in fast.masters.work.parameters())  # moved to the masters
    moved = [
        p for p, q in zip(fast.model.parameters(), before, strict=True) if not torch.equal(p, q)
    ]
    assert len(moved) == len(grads_b)  # every trained master took Adam's step, in fp32
    assert all(p.dtype == torch.float32 for p in fast.model.parameters())
    for m, w in zip(fast.model.parameters(), fast.masters.work.parameters(), strict=True):
        assert torch.equal(w, m.detach().to(torch.bfloat16))  # the copy follows the masters


def test_bf16_weights_keep_bf16_through_dropout():
    """CPU dropout's byte mask keeps a bf16 copy in bf16 (a float mask would promote it)."""
    run = small_run(["train.bf16_weights=true", "model.dropout=0.1"], torch.device("cpu"))
    out = training.step_body(run, torch.arange(8), torch.arange(20, 28), 1.0)
    assert torch.isfinite(out).all()


def test_fsan_train_with_bf16_weights_saves_fp32_masters(tmp_path):
    data = tmp_path / "data"
    tiny_synthetic(data)
    result = CliRunner().invoke(
        app,
        [
            "--device",
            "cpu",
            "train",
            "--data-dir",
            str(data),
            "--out",
            str(tmp_path / "r"),
            "--no-test",
            "--json",
            "--set",
            "model.hidden=16",
            "--set",
            "model.layers=1",
            "--set",
            "model.heads=2",
            "--set",
            "train.epochs=2",
            "--set",
            "train.bf16_weights=true",
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert (
        "Training step: eager, bf16 weights with fp32 masters (train.bf16_weights)" in result.stderr
    )
    for name in ("best.pt", "last.pt"):
        state = torch.load(tmp_path / "r" / name, weights_only=False)["state_dict"]
        trained = {k: v for k, v in state.items() if k != "embedding.weight"}
        assert all(v.dtype == torch.float32 for v in trained.values())
        # Adam's small steps on fp32 masters: not every weight is a bf16 number
        assert any(not torch.equal(v, v.bfloat16().float()) for v in trained.values())
    assert all(json.loads(line)["loss"] > 0 for line in (tmp_path / "r" / "metrics.jsonl").open())


@pytest.mark.slow
def test_compiled_losses_equal_eager_losses():
    """torch.compile'd fsan_losses and segment_scores (train.compile_losses): the losses and
    gradients of eager ones on random inputs, with a changing token count (recompiled)."""
    cfg = load_settings("activitynet", overrides=SMALL).model_config(12, 20)
    model = FSAN(cfg, torch.randn(50, 12))
    losses, scores = torch.compile(fsan_losses), torch.compile(segment_scores)
    g = torch.Generator().manual_seed(3)
    for ns in (5, 7):
        p = (torch.rand(4, ns, cfg.clips, generator=g) * 2 - 1).requires_grad_()
        mask = torch.ones(4, ns, dtype=torch.bool)
        mask[1, 3:] = mask[2, 2:] = False
        neg_p = (torch.rand(4, ns, cfg.clips, generator=g) * 2 - 1).requires_grad_()
        ok = torch.tensor([True, True, False, True])
        outs = []
        for loss_fn, score_fn in ((fsan_losses, segment_scores), (losses, scores)):
            pos = type_out(p, score_fn(p, mask), mask)
            neg = type_out(neg_p, score_fn(neg_p, mask), mask)
            out = loss_fn(model, pos, neg, ok, neg, 0.7)
            grads = torch.autograd.grad(out.total, [p, neg_p])
            outs.append((torch.stack(list(out)), *grads, score_fn(p, mask)))
        for eager, compiled in zip(*outs, strict=True):
            torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def type_out(p, sc, mask):
    from models.fsan import FSANOutput

    return FSANOutput(p, sc, mask)


def test_compile_losses_setting_wires_the_compiled_functions(monkeypatch):
    """train.compile_losses: the pass calls the compiled losses, the network its compiled
    segment scores in training mode only (evaluation keeps the eager one)."""
    from fsan_cli.train import step_options

    calls = []

    def fake():
        def losses(*args):
            calls.append("losses")
            return fsan_losses(*args)

        def scores(*args):
            calls.append("scores")
            return segment_scores(*args)

        return losses, scores

    monkeypatch.setattr(step_options, "compiled_losses", fake)
    run = small_run(["train.compile_losses=true"], torch.device("cpu"))
    training.step_body(run, torch.arange(8), torch.arange(20, 28), 1.0)
    assert calls.count("losses") == 1 and calls.count("scores") == 3  # (V,S), (V,S-), (V-,S)
    run.model.eval()
    with torch.no_grad():
        run.model(run.data.features[:2], run.data.tokens[:2])
    assert calls.count("scores") == 3


def test_default_pass_is_the_plain_one():
    tc, cpu = TrainSettings(), torch.device("cpu")
    model = FSAN(load_settings("activitynet", overrides=SMALL).model_config(12, 20))
    assert type(training_pass(model, tc, cpu)) is TrainingPass
    assert training_pass(model, tc, torch.device("cuda")).bf16  # autocast on CUDA
    assert model.compiled_scores is None


def test_when_a_ddp_step_is_captured():
    gpu, two = torch.device("cuda", 0), Dist(rank=0, world=2)
    assert use_cuda_graph(TrainSettings(), gpu, False, two) is False
    assert use_cuda_graph(TrainSettings(static_graph=True), gpu, False, two) is True
    assert use_cuda_graph(TrainSettings(static_graph=True), gpu, True, two) is False  # --compile
    pieces = TrainSettings(static_graph=True, micro_batch=16)  # shares of 64 in 4 pieces
    assert two.static_graph(pieces) is False and use_cuda_graph(pieces, gpu, False, two) is False
    whole = TrainSettings(static_graph=True, micro_batch=64)  # one piece each
    assert two.static_graph(whole) is True and Dist().static_graph(whole) is False
    assert "dynamic graph" in describe(pieces, gpu, False, False, 2, False)
    assert (
        use_cuda_graph(TrainSettings(static_graph=True), torch.device("cpu"), False, two) is False
    )


def test_the_stderr_line_names_the_path():
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    line = describe(TrainSettings(), gpu, False, True, 1)
    assert line == (
        "Training step: captured as one CUDA graph after 3 eager steps (train.cuda_graph), "
        "bf16 autocast, fused Adam"
    )
    assert describe(TrainSettings(), cpu, False, False, 1) == "Training step: eager, fp32"
    assert "torch.compile, mode default (--compile)" in describe(
        TrainSettings(), gpu, True, False, 1
    )
    tc = TrainSettings(bf16_weights=True, compile_losses=True, static_graph=True)
    line = describe(tc, gpu, False, True, 2, True)
    assert "after 11 eager steps" in line and "bf16 weights with fp32 masters" in line
    assert "compiled losses" in line and "DDP over 2 processes, static graph" in line


def test_master_weights_copy_is_independent():
    model = FSAN(load_settings("activitynet", overrides=SMALL).model_config(12, 20))
    masters = MasterWeights(model)
    first = next(p for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        first.add_(1.0)
    work = next(p for p in masters.work.parameters() if p.requires_grad)
    assert not torch.equal(work, first.bfloat16())
    masters.copy_to_work()
    assert torch.equal(work, first.detach().bfloat16())


@cuda
def test_captured_bf16_weights_follow_eager_bf16_weights():
    """train.bf16_weights under train.cuda_graph: the replayed steps give the eager steps'
    losses and masters (the copy to the bf16 weights is captured too)."""
    gpu = torch.device("cuda")
    sets = ["train.bf16_weights=true"]
    eager, graphed = small_run(sets, gpu), small_run(sets, gpu, captured=True)
    g = torch.Generator().manual_seed(2)
    for _ in range(7):
        idx, neg = (
            torch.randint(0, 40, (8,), generator=g).cuda(),
            torch.randint(0, 40, (8,), generator=g).cuda(),
        )
        a = training.step_body(eager, idx, neg, 1.0)
        b = graphed.captured(idx, neg, 1.0)
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)
    assert graphed.captured.graph is not None
    for p, q in zip(eager.model.parameters(), graphed.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-4)


@cuda
def test_captured_compiled_losses_follow_eager():
    gpu = torch.device("cuda")
    eager = small_run(["train.bf16_weights=true"], gpu)
    graphed = small_run(
        ["train.bf16_weights=true", "train.compile_losses=true"], gpu, captured=True
    )
    g = torch.Generator().manual_seed(2)
    for _ in range(6):
        idx, neg = (
            torch.randint(0, 40, (8,), generator=g).cuda(),
            torch.randint(0, 40, (8,), generator=g).cuda(),
        )
        a = training.step_body(eager, idx, neg, 1.0)
        b = graphed.captured(idx, neg, 1.0)
        torch.testing.assert_close(b, a, rtol=2e-3, atol=1e-3)


@pytest.mark.slow
def test_two_processes_with_a_static_graph_follow_one_process(tmp_path):
    """train.static_graph under torchrun (gloo, eager: capturing needs CUDA): DDP built with
    static_graph=True gives the losses of one process on the same global batches (the
    tolerance of tests/test_distributed.py)."""
    import sys

    from fsan_cli.data.synthetic import ensure_synthetic
    from tests.test_distributed import LOSSES, SETS, free_port, losses, run

    ensure_synthetic(tmp_path, sizes={"train": 30, "val": 8, "test": 8})
    train = [
        "-m",
        "fsan_cli",
        "--device",
        "cpu",
        "train",
        "--data-dir",
        str(tmp_path),
        "--no-test",
        "--json",
        *[f"--set={s}" for s in SETS],
    ]
    static = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
            *train,
            "--set=train.static_graph=true",
            "--out",
            str(tmp_path / "static"),
        ],
        tmp_path,
    )
    assert static.returncode == 0, static.stderr[-3000:]
    assert "DDP over 2 processes, static graph (train.static_graph)" in static.stderr
    # micro-batch pieces need DDP's no_sync, which a static graph refuses: the dynamic one
    pieces = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
            *train,
            "--set=train.static_graph=true",
            "--micro-batch",
            "3",
            "--out",
            str(tmp_path / "pieces"),
        ],
        tmp_path,
    )
    assert pieces.returncode == 0, pieces.stderr[-3000:]
    assert "DDP over 2 processes, dynamic graph (train.micro_batch's pieces)" in pieces.stderr
    one = run([sys.executable, *train, "--out", str(tmp_path / "one")], tmp_path)
    assert one.returncode == 0, one.stderr
    b = losses(tmp_path / "one")
    for name in ("static", "pieces"):
        a = losses(tmp_path / name)
        assert len(a) == len(b) == 2
        for x, y in zip(a, b, strict=True):
            for key in LOSSES:
                assert x[key] == pytest.approx(y[key], abs=1e-2), (name, key, a, b)
        assert a[0]["loss"] == pytest.approx(b[0]["loss"], abs=1e-3)


def composed_loop(features, vids, idx, neg, share, normalize):
    """step.composed, one sample at a time."""
    import torch.nn.functional as F

    from fsan_cli.train.step import HASH

    a, b, m = HASH
    out = []
    nv = features.shape[1]
    for i in range(len(idx)):
        own, other = int(vids[idx[i]]), int(vids[neg[(i - 1) % len(idx)]])
        h = (int(idx[i]) * a + int(neg[i]) * b) % m
        video = features[own].float()
        if h < share * m and other != own and other != int(vids[neg[i]]):
            first = F.adaptive_avg_pool1d(video.T[None], nv // 2)[0].T
            second = F.adaptive_avg_pool1d(features[other].float().T[None], nv - nv // 2)[0].T
            video = torch.cat([second, first]) if h % 2 == 1 else torch.cat([first, second])
            video = F.normalize(video, dim=-1) if normalize else video
        out.append(video)
    return torch.stack(out)


def test_composed_videos_against_a_plain_loop():
    from fsan_cli.train.step import composed

    gen = torch.Generator().manual_seed(0)
    features = torch.randn(7, 8, 5, generator=gen)
    vids = torch.randint(0, 7, (30,), generator=gen)
    idx, neg = torch.randint(0, 30, (16,), generator=gen), torch.randint(0, 30, (16,), generator=gen)
    for share, normalize in ((0.5, True), (1.0, False), (0.0, True)):
        got = composed(features, vids, idx, neg, share, normalize)
        torch.testing.assert_close(got, composed_loop(features, vids, idx, neg, share, normalize))
    assert torch.equal(composed(features, vids, idx, neg, 0.0, True), features[vids[idx]])
    odd = torch.randn(7, 7, 5, generator=gen)  # an odd N_v: 3 clips and 4, in either order
    torch.testing.assert_close(composed(odd, vids, idx, neg, 1.0, True), composed_loop(odd, vids, idx, neg, 1.0, True))
    # about the share asked (200 videos: few draws meet their own video), in both orders
    features, vids = torch.randn(200, 8, 5, generator=gen), torch.arange(200)
    idx, neg = torch.randint(0, 200, (4000,), generator=gen), torch.randint(0, 200, (4000,), generator=gen)
    got = composed(features, vids, idx, neg, 0.5, False)
    changed = (got != features[idx]).flatten(1).any(1)
    assert 0.46 < float(changed.float().mean()) < 0.52
    own_first = (got[:, :4] == torch.nn.functional.adaptive_avg_pool1d(features[idx].transpose(1, 2), 4)
                 .transpose(1, 2)).flatten(1).all(1)
    assert 0.4 < float(own_first[changed].float().mean()) < 0.6


def test_hard_negatives_against_a_plain_loop():
    """train.hard_negatives = m: of m drawn captions, the one nearest the sample's sentence
    (cosine of mean word vectors) from another video; off, the same single draw as before."""
    from types import SimpleNamespace

    gen = torch.Generator().manual_seed(0)
    q, ns, vocab = 40, 6, 30
    tokens = torch.randint(1, vocab, (q, ns), generator=gen)
    tokens[:, 4:] = torch.where(torch.rand(q, 2, generator=gen) < 0.5, 0, tokens[:, 4:])  # some padding
    vids = torch.randint(0, 5, (q,), generator=gen)
    model = SimpleNamespace(embedding=torch.nn.Embedding(vocab, 7, padding_idx=0))
    idx = torch.randint(0, q, (16,), generator=gen)

    def run_with(m: int, seed: int):
        return SimpleNamespace(data=SimpleNamespace(tokens=tokens, vids=vids), model=model, device=torch.device("cpu"),
                               gen=torch.Generator().manual_seed(seed), cfg=SimpleNamespace(train=SimpleNamespace(hard_negatives=m)))

    plain = training.draw_negatives(run_with(0, 3), idx, None)
    assert torch.equal(plain, torch.randint(0, q, idx.shape, generator=torch.Generator().manual_seed(3)))
    run = run_with(8, 3)
    sentences = training.sentence_vectors(run)
    got = training.draw_negatives(run, idx, sentences)
    drawn = torch.randint(0, q, (16, 8), generator=torch.Generator().manual_seed(3))
    weights = model.embedding.weight.detach()
    for b in range(16):  # the plain loop
        def mean_vector(row):
            words = [weights[t] for t in tokens[row].tolist() if t != 0]
            v = torch.stack(words).mean(0)
            return v / v.norm()
        best, best_sim = int(drawn[b, 0]), -float("inf")
        for c in drawn[b].tolist():
            if vids[c] == vids[idx[b]]:
                continue
            sim = float(mean_vector(idx[b].item()) @ mean_vector(c))
            if sim > best_sim:
                best, best_sim = c, sim
        assert int(got[b]) == best
    assert (vids[got] != vids[idx]).float().mean() > 0.9
