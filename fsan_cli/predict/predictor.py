"""The one inference path: a `Predictor` turns (video, query) pairs into top-k moments and
alignment maps. `fsan evaluate --checkpoint`, the validation inside `fsan train`, `fsan ablate`
and `fsan ground` all call it, so a query gets the same answer on every path.

Queries are batched by length (each batch is cut to its longest query: padded tokens are masked
everywhere, so the answer does not depend on the batch); on a CPU, batches run side by side on
one thread each (`cpu_workers`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsan_cli.core import checkpoint
from fsan_cli.core.errors import FsanError
from fsan_cli.core.output import warn
from fsan_cli.core.text import (
    TOKENIZER,
    WordSource,
    encode_texts,
    query_tokens,
    tokenize,
    tokenizer_of,
)
from fsan_cli.data.features import video_clips
from fsan_cli.data.store import video_rows
from fsan_cli.predict.answers import Answers, Grounding, Predictions
from fsan_cli.predict.runtime import cpu_workers, resolve_precision, reuse_freed_memory
from fsan_cli.predict.span_prior import SpanPrior, valid_cells
from fsan_cli.video import record as extractor
from models.fsan import FSAN
from models.losses import matching_score
from models.segments import segments_to_seconds, top_k_segments, word_coverage

GPU_BATCH = 64  # queries per model call on a GPU
CPU_BATCH = 32  # on a CPU, per worker thread (measured best of 16, 32 and 64 with 2 workers)
# A matrix product's rounding depends on its shapes (the kernel and its blocking), so a query's
# answer moved with the batch it shared when batches were cut to their longest query: ranks 3-5
# and scores' third decimal in bf16, the last bits in fp32. Every batch therefore has
# max_tokens tokens. On a CPU the batch size was measured not to matter (tests/
# test_ground_pairs.py); on a GPU, where padding a batch costs next to nothing, every batch
# also has GPU_BATCH queries (a short one padded with its own).
DIDEMO_SEGMENTS = 21  # DiDeMo ranks all 21 (s, e) pairs of its six chunks, without NMS



def zeroed(rows: np.ndarray, name: str) -> np.ndarray:
    """`rows` with those holding NaN or inf made zero rows (as `fsan prepare` does), said."""
    finite = np.isfinite(rows).all(axis=1)
    warn(f"{int((~finite).sum())} feature rows of '{name}' hold NaN or inf; read as zeros")
    return np.where(finite[:, None], rows, 0).astype(np.float32)

class Predictor:
    """A model ready to answer: the checkpoint's network (or the one being trained), its
    vocabulary, how its features were prepared, its NMS, a device and a precision.

    `words`, the word vectors the vocabulary was built from (text.WordSource), embeds the
    queries' words outside the vocabulary as training would have (`extend`); without it (a
    checkpoint of an older fsan) they are <unk>. `tokenizer`, the version (text.TOKENIZER) the
    vocabulary was built with: queries are tokenized by it (a checkpoint of an older fsan: 1)."""

    def __init__(self, model: FSAN, vocab: list[str], data: dict[str, Any], nms: float,
                 device: torch.device, precision: str = "fp32", words: WordSource | None = None,
                 tokenizer: int = TOKENIZER, span_prior: SpanPrior | None = None) -> None:
        self.device = device
        self.precision = resolve_precision(precision, device)
        self.model = model.to(torch.bfloat16) if self.precision == "bf16" else model
        self.vocab = vocab
        self.word_to_id = {w: i for i, w in enumerate(vocab)}
        self.data = data
        self.nms = float(nms)
        self.clips = int(data["clips"])
        self.max_tokens = int(model.cfg.max_tokens)
        self.words = words
        self.tokenizer = tokenizer
        self.checkpoint: Path | None = None
        self.extractor: dict[str, Any] | None = None  # the features' extractor (video/record.py)
        self._span_prior = span_prior if span_prior is not None and span_prior.weight > 0 else None

    @property
    def span_prior(self) -> SpanPrior | None:
        """The span prior the answers use (fsan_cli/predict/span_prior.py), fixed when the
        Predictor is made: None where it answers with the model alone."""
        return self._span_prior

    @classmethod
    def load(cls, path: Path, device: torch.device, precision: str = "fp32",
             span_prior: bool = True, nms: float | None = None) -> Predictor:
        """The checkpoint's model; with `span_prior`, ranking by the span prior it holds (if any);
        its top-k after NMS at `nms` (default the checkpoint's eval.nms; 1: none)."""
        if device.type == "cpu":
            reuse_freed_memory()
        ckpt = checkpoint.load(path)
        data = {**ckpt["data"], "pca": checkpoint.pca_of(ckpt)}
        nms = checkpoint.settings_of(ckpt).eval.nms if nms is None else nms
        words = WordSource.of(ckpt.get("word_vectors"), ckpt["vocab"], f"the checkpoint {path}")
        prior = SpanPrior.in_checkpoint(ckpt, path, int(data["clips"])) if span_prior else None
        predictor = cls(checkpoint.build_model(ckpt, device), ckpt["vocab"], data, nms, device, precision,
                        words, tokenizer_of(ckpt, f"the checkpoint {path}"), prior)
        predictor.checkpoint = Path(path)
        predictor.extractor = extractor.check(ckpt.get("extractor"), f"the checkpoint {path}")
        return predictor

    def weighted_prior(self) -> torch.Tensor | None:
        """w * log p (N_v, N_v) on the device, or None without a span prior in use."""
        if self._span_prior is None:
            return None
        return torch.from_numpy(self._span_prior.weight * self._span_prior.log_prior).to(self.device)

    @property
    def dataset(self) -> str | None:
        return self.data.get("dataset")

    # ------------------------------------------------------------------------- inputs

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids (Q, Ns), zero-padded; words outside the vocabulary are embedded from its
        word vectors (`extend`), those not there either are <unk>; a query of no words is one
        padding token; truncated to the model's max_tokens."""
        self.extend(texts)
        return encode_texts(texts, self.word_to_id, self.max_tokens, self.tokenizer)

    def tokens(self, text: str) -> list[str]:
        """The words of `text` the model reads (text.query_tokens by its tokenizer)."""
        return query_tokens(text, self.max_tokens, self.tokenizer)

    def extend(self, texts: Sequence[str]) -> None:
        """Give the words of `texts` (those the model reads) that are outside the vocabulary but
        in its word vectors an id and an embedding row: the source's vector, exactly as
        `fsan prepare` would have put it in the vocabulary. The model is replaced by a view with
        the longer embedding (`with_rows`), so the model itself, the one being trained
        included, is left as it was."""
        if self.words is None:
            return
        new = {w for t in texts for w in self.tokens(t) if w not in self.word_to_id}
        found = self.words.lookup(sorted(new)) if new else {}
        if not found:
            return
        added = sorted(found)
        start = self.model.embedding.num_embeddings
        self.model = with_rows(self.model, torch.from_numpy(np.stack([found[w] for w in added])))
        self.word_to_id.update({w: start + i for i, w in enumerate(added)})

    def video_clips(self, rows: np.ndarray, name: str) -> np.ndarray:
        """(N_v, D) model input from a video's (T, D_in) features: PCA, pooling and L2 norm
        exactly as `fsan prepare` did for training (data.features.video_clips)."""

        pca = self.data.get("pca")
        expected = int(pca["mean"].shape[0]) if pca else int(self.data["feature_dim"])
        if rows.shape[1] != expected:
            how = f", projected by its PCA to {self.data['feature_dim']}" if pca else ""
            raise FsanError(
                f"video '{name}' has {rows.shape[1]}-d features, the checkpoint expects {expected}-d{how}",
                "Use features from the extractor the model was trained on, or another --checkpoint",
            )
        normalize = bool(self.data.get("normalize", True))
        with np.errstate(invalid="ignore", over="ignore"):
            out = video_clips(rows, self.clips, pca=pca, normalize=normalize)
        if not np.isfinite(out).all():  # as prepare does: non-finite rows become zero rows
            out = video_clips(zeroed(rows, name), self.clips, pca=pca, normalize=normalize)
        return out

    # ------------------------------------------------------------------------- the model

    def _forward(self, features: torch.Tensor, video: np.ndarray, ids: np.ndarray, rows: np.ndarray):
        """The model's output for queries `rows` (inference mode): every batch max_tokens
        wide, and on a GPU GPU_BATCH long (padded with its own queries; cut back here)."""
        take = np.resize(rows, GPU_BATCH) if self.device.type != "cpu" else rows
        tok = np.zeros((len(take), self.max_tokens), np.int64)  # one width for every batch
        tok[:, : min(self.max_tokens, ids.shape[1])] = ids[take, : self.max_tokens]
        dtype = next(self.model.parameters()).dtype
        vid = torch.from_numpy(video[take]).to(features.device)
        out = self.model(features[vid].to(self.device, dtype), torch.from_numpy(tok).to(self.device))
        return out, len(rows)

    def predict(self, features: torch.Tensor, video: np.ndarray, ids: np.ndarray, k: int,
                nms: float | None = None, maps: bool = False,
                progress: Callable[[int], None] | None = None, plain: bool = False,
                match: bool = False, coverage: bool = False) -> Predictions:
        """Top-k segments of every query: features (V, N_v, D) of the videos, video (Q,) the row
        of each query's video, ids (Q, Ns) its tokens. `progress(n)` hears of each batch done.

        With a span prior in use the segments rank by SC + w log p; `changed` flags the
        queries whose top-1 it moved, and with `plain` the model's own top-k come too; with
        `match`, each query's matching score S(V, S) (eq. 7, the training's L^t reads it), which
        compares across videos and windows where SC does not (Predictions.match); with
        `coverage`, how well every word finds a clip (models.segments.word_coverage), which
        ranks a long video's windows (Predictions.coverage)."""
        nms = self.nms if nms is None else nms
        q = len(ids)
        k = min(k, self.clips * (self.clips + 1) // 2)
        prior = self.weighted_prior()
        both = plain and prior is not None
        segments = np.zeros((2 if both else 1, q, k, 2), np.int64)
        scores = np.zeros((2 if both else 1, q, k), np.float32)
        changed = np.zeros(q, bool)
        found: list[np.ndarray | None] = [None] * q
        score_maps: list[np.ndarray | None] = [None] * q
        matched = np.zeros(q, np.float32) if match else None
        covered = np.zeros(q, np.float32) if coverage else None
        lengths = (ids != 0).sum(1).clip(1)
        self.model.eval()

        def run(rows: np.ndarray):
            with torch.inference_mode():  # grad mode is per thread
                out, n = self._forward(features, video, ids, rows)
                sc = out.segment_scores[:n].float()
                ranked = [sc] if prior is None else [sc + prior, sc][: 2 if both else 1]
                tops = [top_k_segments(x, k, nms) for x in ranked]
                moved = None
                if prior is not None:
                    moved = (ranked[0].flatten(1).argmax(1) != sc.flatten(1).argmax(1)).cpu().numpy()
                amap = smap = None
                if maps:
                    amap = out.alignment_map[:n].float().cpu().numpy()
                    smap = self.model.sc_input(out.alignment_map[:n], out.token_mask[:n]).float().cpu().numpy()
                m = matching_score(out, self.model.cfg)[:n].float().cpu().numpy() if match else None
                c = (word_coverage(out.alignment_map[:n], out.token_mask[:n]).float().cpu().numpy()
                     if coverage else None)
                return (rows, [t[0].cpu().numpy() for t in tops], [t[1].float().cpu().numpy() for t in tops],
                        moved, amap, smap, m, c)

        for rows, seg, score, moved, amap, smap, m, c in self._batches(lengths, run):
            for i in range(len(seg)):
                segments[i, rows], scores[i, rows] = seg[i], score[i]
            if moved is not None:
                changed[rows] = moved
            if matched is not None:
                matched[rows] = m
            if covered is not None:
                covered[rows] = c
            if progress is not None:
                progress(len(rows))
            if amap is not None:
                for j, r in enumerate(rows.tolist()):
                    found[r] = amap[j, : int(lengths[r])]
                    score_maps[r] = smap[j, : int(lengths[r])]
        own = Predictions(segments[-1], scores[-1], None) if both else None
        return Predictions(segments[0], scores[0], found if maps else None, score_maps if maps else None,
                           changed if prior is not None else None, own, matched, covered)

    def segment_grid(self, features: torch.Tensor, video: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """(Q, S) every query's SC of the S = N_v (N_v + 1) / 2 valid segments (row-major
        s <= e, span_prior.valid_cells): what the span prior's weight is chosen on."""

        cells = torch.from_numpy(valid_cells(self.clips)).to(self.device)
        grid = np.zeros((len(ids), len(cells)), np.float32)
        self.model.eval()

        def run(rows: np.ndarray):
            with torch.inference_mode():
                out, n = self._forward(features, video, ids, rows)
                return rows, out.segment_scores[:n].float().flatten(1)[:, cells].cpu().numpy()

        for rows, values in self._batches((ids != 0).sum(1).clip(1), run):
            grid[rows] = values
        return grid

    def _batches(self, lengths: np.ndarray, run) -> Iterator:
        """`run` over batches of queries; side by side on a CPU."""
        order = np.arange(len(lengths))
        with cpu_workers(len(order), self.device) as workers:
            cap = CPU_BATCH if self.device.type == "cpu" else GPU_BATCH
            size = max(1, min(cap, -(-len(order) // workers)))
            batches = [order[i : i + size] for i in range(0, len(order), size)]
            if workers == 1:
                yield from map(run, batches)
                return
            pool = ThreadPoolExecutor(workers)
            try:
                yield from pool.map(run, batches)
            finally:
                pool.shutdown(cancel_futures=True)

    # ------------------------------------------------------------------------- answers

    def rows(self, store: Any, queries: Sequence[Any], top_k: int) -> list[dict[str, Any]]:
        """Predictions rows (DESIGN.md format) for a prepared split's queries."""
        if not queries:
            return []
        return self.answer_split(store, queries, top_k).rows(list(queries), top_k)

    def answer_split(self, store: Any, queries: Sequence[Any], top_k: int, checked: bool = False) -> Answers:
        """The answers to a prepared split's queries (data.store.Query), in their order (`checked`:
        the caller ran check_split)."""
        if not checked:
            self.check_split(store, queries)
        features = torch.from_numpy(np.array(store.features, dtype=np.float32)).to(self.device)
        durations = np.array([q.duration for q in queries], np.float64)
        return self.answer(features, video_rows(store, list(queries)), durations, [q.query for q in queries], top_k)

    def check_split(self, store: Any, queries: Sequence[Any]) -> None:
        """A prepared split fits the model: N_v, features, their extractor, the vocabulary."""
        checkpoint.check_compatible({"data": self.data}, store)
        theirs_record = extractor.check(store.manifest.get("extractor"), f"the store at {store.path}")
        if not (theirs_record is None or self.extractor is None or extractor.same(theirs_record, self.extractor)):
            raise FsanError(f"the store at {store.path} holds {extractor.describe(theirs_record)}, and "
                            f"{f'the checkpoint {self.checkpoint}' if self.checkpoint else 'the model'} was trained on {extractor.describe(self.extractor)}",
                            "Prepare the store from features of the checkpoint's weights and --fps (fsan "
                            "extract --weights DIR), or use a checkpoint trained on these features")
        theirs = store.manifest.get("dataset")
        if self.dataset and theirs and self.dataset != theirs:
            warn(f"{self.checkpoint or 'the model'} was trained on {self.dataset}; these queries are of {theirs}")
        if queries:
            check_vocabulary(self.vocab, [q.query for q in queries], self.checkpoint or "the model", self.tokenizer)

    def answer(self, features: torch.Tensor, video: np.ndarray, durations: np.ndarray,
               texts: Sequence[str], top_k: int, maps: bool = False,
               progress: Callable[[int], None] | None = None) -> Answers:
        """Every query's top-k moments (in seconds too); a DiDeMo model ranks all 21 segments.
        With a span prior in use, the model's own top-k come along (Answers.plain)."""
        ranked = self.dataset == "didemo"
        k, nms = (DIDEMO_SEGMENTS, 1.0) if ranked else (top_k, self.nms)
        out = self.predict(features, video, self.encode(texts), k, nms, maps, progress, plain=True)
        dur = torch.from_numpy(durations)
        seconds = segments_to_seconds(torch.from_numpy(out.segments), dur, self.clips)
        plain = None
        if out.plain is not None:
            plain = segments_to_seconds(torch.from_numpy(out.plain.segments), dur, self.clips)
        weight = self._span_prior.weight if out.changed is not None else None
        return Answers(out, seconds, ranked, None if ranked else self.nms, plain, weight)

    def ground(self, clips: np.ndarray, video: np.ndarray, durations: np.ndarray,
               texts: Sequence[str], top_k: int,
               progress: Callable[[int], None] | None = None) -> tuple[Answers, list[Grounding]]:
        """Top-k moments and alignment maps of every query: clips (V, N_v, D) of the videos,
        video (Q,) the row of each query's video, durations (Q,) its seconds."""
        features = torch.from_numpy(np.ascontiguousarray(clips, np.float32)).to(self.device)
        answers = self.answer(features, video, durations, texts, top_k, maps=True, progress=progress)
        out, results = answers.predictions, []
        for i, text in enumerate(texts):
            words = self.tokens(text)
            unknown = [w for w in words if w not in self.word_to_id]
            own = None
            if answers.plain_seconds is not None and out.plain is not None:
                own = (out.plain.segments[i][0], answers.plain_seconds[i][0], float(out.plain.scores[i][0]))
            results.append(Grounding(text, words, unknown, out.segments[i][:top_k],
                                     answers.seconds[i][:top_k], out.scores[i][:top_k], out.maps[i],
                                     out.score_maps[i] if out.score_maps else None,
                                     self.model.cfg.sc_map, answers.prior_weight,
                                     bool(out.changed[i]) if out.changed is not None else False, own))
        return answers, results


def with_rows(model: FSAN, rows: torch.Tensor) -> FSAN:
    """A shallow copy of `model` whose frozen word embedding has `rows` appended (in its dtype,
    on its device); every other module and parameter is the model's own, shared."""
    weight = model.embedding.weight.detach()
    view = copy.copy(model)
    view._modules = dict(model._modules)  # the copy's own table: the model keeps its embedding
    view.embedding = torch.nn.Embedding.from_pretrained(
        torch.cat([weight, rows.to(weight.device, weight.dtype)]), freeze=True, padding_idx=0)
    return view


def check_vocabulary(vocab: list[str], texts: Sequence[str], source: Path | str,
                     version: int = TOKENIZER) -> None:
    """A model that knows under half of the queries' words (tokenizer `version`) was trained on
    other data."""
    known = set(vocab)
    words = [w for t in texts for w in tokenize(t, version)]
    unknown = [w for w in words if w not in known]
    if words and len(unknown) > len(words) / 2:
        examples = ", ".join(list(dict.fromkeys(unknown))[:3])
        raise FsanError(
            f"the vocabulary of {source} knows only {100 * (1 - len(unknown) / len(words)):.0f}% "
            f"of the words in these queries (unknown: {examples}, ...)",
            "Use a checkpoint trained on this dataset, or check --dataset",
        )
