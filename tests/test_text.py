"""Tokenizer and the three word-vector sources."""

from __future__ import annotations

import numpy as np
import pytest

from fsan_cli.core.errors import FsanError
from fsan_cli.core.text import PAD, TOKENIZER, UNK, build_vocab, encode, load_word_vectors, tokenize


def test_tokenize_lowercases_drops_punctuation_keeps_inner_apostrophes():
    assert tokenize("A person's Phone, off the DESK!", 1) == ["a", "person's", "phone", "off", "the", "desk"]
    assert tokenize("A person's Phone, off the DESK!") == ["a", "person", "'s", "phone", "off", "the", "desk"]
    assert tokenize("at 5 o'clock") == ["at", "5", "o'clock"]  # clitics split (test_tokenizer.py)
    assert tokenize("café_x über 3 times") == ["café", "x", "über", "3", "times"]
    assert tokenize("  ,;  ") == []


def test_default_vectors_are_genuine_glove_6b_50d():
    wv = load_word_vectors(None, needed={"the", "door", "notaword123"})
    assert wv.dim == 50 and sorted(wv.words) == ["door", "the"]
    the = wv.vectors[wv.words.index("the")]
    # first components of "the" in glove.6B.50d.txt
    np.testing.assert_allclose(the[:3], [0.418, 0.24968, -0.41242], atol=1e-5)


def test_glove_text_format_with_a_spaced_token(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("door 1 2 3\nopen door 4 5 6\nthe 0.5 0 -1\n", encoding="utf-8")
    wv = load_word_vectors(str(path))
    assert wv.words == ["door", "open door", "the"] and wv.dim == 3
    np.testing.assert_array_equal(wv.vectors[1], [4, 5, 6])
    only = load_word_vectors(str(path), needed={"the"})
    assert only.words == ["the"]


def test_word2vec_binary_real_sample(shared_data):
    wv = load_word_vectors(str(shared_data / "charades" / "glove_charades_300d_subset.word2vec.bin"))
    assert wv.dim == 300 and len(wv.words) == 1144
    assert {"person", "door", "opens"} <= set(wv.words)
    assert np.isfinite(wv.vectors).all() and np.abs(wv.vectors).max() > 0.1


def test_missing_vector_file_is_a_user_error(tmp_path):
    with pytest.raises(FsanError, match="does not exist"):
        load_word_vectors(str(tmp_path / "nope.txt"))
    with pytest.raises(FsanError, match=r"word-vector file /dev/null is not a regular file \(a FIFO"):
        load_word_vectors("/dev/null")  # it exists: not "does not exist"
    with pytest.raises(FsanError, match=f"word-vector file {tmp_path} is a folder"):
        load_word_vectors(str(tmp_path))


def test_a_file_that_is_no_glove_file_says_so(tmp_path):
    """Random bytes were read as 2-d vectors of 2 words (only the needed words' lines were
    parsed), and a short all-number line crashed with an 'unexpected ValueError'."""
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes().replace(b"\0", b"x"))
    with pytest.raises(FsanError, match=r"garbage.bin:\d+ is not a GloVe text line \(a field after its word is not a number\)"):
        load_word_vectors(str(garbage), needed={"the", "man"})
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("the 0.1 0.2 0.3 0.4 0.5\n1 2 3\nman 1 2 3 4 5\n")
    with pytest.raises(FsanError, match="ragged.txt:2 has 3 fields, and the file's first vector has a word and 5 numbers"):
        load_word_vectors(str(ragged), needed={"the", "man", "1"})
    fine = tmp_path / "fine.txt"
    fine.write_text("the 0.1 0.2 0.3\nman 1 2 3\n")
    vectors = load_word_vectors(str(fine), needed={"man"})
    assert vectors.words == ["man"] and vectors.vectors.tolist() == [[1.0, 2.0, 3.0]]


def test_vocabulary_oov_and_encoding():
    wv = load_word_vectors(None, needed={"a", "man", "opens", "door"})
    vocab, matrix, stats = build_vocab(["a man opens the door", "a zzqx opens"], wv)
    assert vocab[:2] == [PAD, UNK]
    assert set(vocab[2:]) == {"a", "man", "opens", "door"}
    assert not matrix[:2].any() and matrix.shape == (6, 50)
    assert stats["oov_tokens"] == 2 and stats["oov_rate"] == pytest.approx(25.0)
    ids = encode("a zzqx door", {w: i for i, w in enumerate(vocab)}, max_tokens=2, version=TOKENIZER)
    assert ids == [vocab.index("a"), 1]
