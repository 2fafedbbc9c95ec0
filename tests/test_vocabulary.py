"""Words the model has never seen (issue 18, point 4): a word outside the training texts is
embedded from the word vectors the vocabulary was built from, the source is recorded in the
store and the checkpoint with a checksum, and a changed or missing source is refused or warned
about."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fsan_cli.app import app
from fsan_cli.core import checkpoint
from fsan_cli.core.settings import load_settings
from fsan_cli.core.text import UNK, load_word_vectors, tokenize
from fsan_cli.data.store import Query, load_store
from fsan_cli.data.synthetic import ensure_synthetic
from fsan_cli.predict import predictor as predict
from fsan_cli.train import loop as training
from fsan_cli.train import resident

KITE = "A kite is being flown in a desert."
NEW = ["is", "being", "flown", "in", "desert"]  # in GloVe 6B, in none of the synthetic captions
TINY = ["model.hidden=32", "model.layers=1", "model.heads=2", "model.align_dim=16", "train.epochs=1"]
CPU = torch.device("cpu")


def clip_rows(store, video: str) -> np.ndarray:
    return np.asarray(store.features[store.video_index[video]])  # (32, 128): pools to itself


def write_video(path: Path, rows: np.ndarray, duration: float) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=rows)
        f.attrs["duration"] = duration
    return path


def unknown_warning(store) -> str:
    """The warning `fsan ground` gives for KITE's words read as <unk>."""
    return f"read as <unk>: {', '.join(sorted(set(tokenize(KITE)) - set(store.vocab)))}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(best.pt, the store) of a tiny model trained on the tiny synthetic benchmark."""
    root = tmp_path_factory.mktemp("vocabulary")
    store = load_store(ensure_synthetic(root, sizes={"train": 40, "val": 10, "test": 10}))
    cfg = load_settings("synthetic", overrides=TINY)
    training.train(cfg, store, root / "run", CPU, progress=False)
    return root / "run" / "best.pt", store


def predictor(path: Path, source: bool = True) -> predict.Predictor:
    p = predict.Predictor.load(path, CPU, "fp32")
    if not source:  # as before: every word outside the vocabulary is <unk>
        p.words = None
    return p


def answers(p: predict.Predictor, store, texts: list[str]) -> predict.Predictions:
    video = store.split("test")[0].video
    features = torch.from_numpy(clip_rows(store, video))[None]
    return p.predict(features, np.zeros(len(texts), np.int64), p.encode(texts), 3, maps=True)


def with_record(src: Path, dst: Path, record: dict | None) -> Path:
    """A copy of checkpoint `src` whose word-vector record is `record` (None: no record)."""
    ckpt = dict(torch.load(src, map_location="cpu", weights_only=True))
    ckpt.pop("word_vectors", None)
    if record is not None:
        ckpt["word_vectors"] = record
    torch.save(ckpt, dst)
    return dst


def ground(args: list[str]):
    return CliRunner().invoke(app, ["--device", "cpu", "ground", *args, "--precision", "fp32"],
                              env={"COLUMNS": "100"})


def test_a_word_outside_the_training_texts_gets_its_glove_vector(trained):
    ckpt, store = trained
    assert not set(NEW) & set(store.vocab)
    p = predictor(ckpt)
    ids = p.encode([KITE])[0]
    words = tokenize(KITE)
    glove = load_word_vectors(None, needed=NEW)
    for w in NEW:
        i = int(ids[words.index(w)])
        assert i != store.vocab.index(UNK) and i >= len(store.vocab)
        # the very vector `fsan prepare` gives the word: the source's row, bit for bit
        np.testing.assert_array_equal(p.model.embedding.weight[i].numpy(),
                                      glove.vectors[glove.words.index(w)])
    # the checkpoint's own words keep their ids and rows
    for w in ("a", "the"):
        assert int(p.word_to_id[w]) == store.vocab.index(w)
    np.testing.assert_array_equal(p.model.embedding.weight[: len(store.vocab)].numpy(), store.vectors)


def test_the_answer_differs_from_reading_the_word_as_unk(trained):
    ckpt, store = trained
    texts = [KITE, "desert"]
    now, before = answers(predictor(ckpt), store, texts), answers(predictor(ckpt, False), store, texts)
    assert not np.allclose(now.scores, before.scores)
    assert not np.allclose(now.maps[1], before.maps[1])  # "desert" alone: its own row, not <unk>'s
    assert (now.segments[:, 0] != before.segments[:, 0]).any(axis=1).any()  # another top-1 moment


def test_training_words_answer_as_before(trained):
    """Queries of vocabulary words (every query of the full synthetic benchmark) get today's ids
    and answers."""
    ckpt, store = trained
    known = set(store.vocab)
    queries = [q for q in store.split("test") if set(tokenize(q.query)) <= known]
    assert len(queries) >= 10
    assert predictor(ckpt).rows(store, queries, 5) == predictor(ckpt, False).rows(store, queries, 5)
    texts = [q.query for q in queries]
    np.testing.assert_array_equal(predictor(ckpt).encode(texts), predictor(ckpt, False).encode(texts))


def test_the_source_is_recorded_in_the_store_and_the_checkpoint(trained):
    from fsan_cli.core.text import vectors_checksum, vectors_record

    ckpt, store = trained
    record = store.manifest["word_vectors"]
    assert record == {"source": "glove-6b-50d", "dim": 50,
                      "sha256": vectors_checksum(store.vocab[2:], store.vectors[2:])}
    assert checkpoint.load(ckpt)["word_vectors"] == record
    assert vectors_record("g.txt", store.vocab, store.vectors)["source"] == str(Path("g.txt").resolve())


def test_the_model_extended_is_a_view_the_model_is_untouched(trained):
    ckpt, store = trained
    model = checkpoint.build_model(checkpoint.load(ckpt))
    p = predict.Predictor(model, store.vocab, {"clips": store.clips, "feature_dim": store.feature_dim},
                          0.5, CPU, words=predictor(ckpt).words)
    p.encode([KITE])
    assert p.model is not model and p.model.icim is model.icim
    assert model.embedding.num_embeddings == len(store.vocab) < p.model.embedding.num_embeddings


def test_validation_embeds_val_words_as_evaluate_will(trained):
    _, store = trained
    val = [Query(store.videos[0]["video"], "a person opens the desert", 10.0)]
    words = resident.val_words(store, val, 20)
    assert words is not None and set(words.found) == {"desert"}


def glove_text(path: Path, store, change: bool) -> Path:
    """A GloVe text file of the store's words (one changed when `change`) and "desert"."""
    glove = load_word_vectors(None, needed=["desert"])
    rows = [(w, v) for w, v in zip(store.vocab[2:], store.vectors[2:], strict=True)]
    rows.append(("desert", glove.vectors[0]))
    with open(path, "w", encoding="utf-8") as fh:
        for i, (w, v) in enumerate(rows):
            v = v + 0.5 if change and i == 0 else v
            fh.write(w + " " + " ".join(repr(float(x)) for x in v) + "\n")
    return path


def test_a_glove_text_file_with_the_same_vectors_serves_new_words(trained, tmp_path):
    ckpt, store = trained
    record = {**store.manifest["word_vectors"], "source": str(glove_text(tmp_path / "g.txt", store, False))}
    p = predictor(with_record(ckpt, tmp_path / "c.pt", record))
    i = int(p.encode(["desert"])[0, 0])
    assert i == len(store.vocab)
    np.testing.assert_array_equal(p.model.embedding.weight[i].numpy(),
                                  load_word_vectors(None, needed=["desert"]).vectors[0])


def test_a_different_source_is_refused(trained, tmp_path):
    ckpt, store = trained
    txt = glove_text(tmp_path / "g.txt", store, True)
    record = {**store.manifest["word_vectors"], "source": str(txt)}
    path = with_record(ckpt, tmp_path / "c.pt", record)
    video = write_video(tmp_path / "v.h5", clip_rows(store, store.split("test")[0].video), 10.0)
    r = ground([str(video), KITE, "--checkpoint", str(path)])
    assert (r.exit_code, r.stdout) == (1, ""), r.output
    changed = np.array(store.vectors[2:])
    changed[0] += 0.5
    from fsan_cli.core.text import vectors_checksum

    now = vectors_checksum(store.vocab[2:], changed)
    assert r.stderr.splitlines()[-1] == (
        f"Error: the word vectors {txt} differ from the ones the checkpoint {path} was built with "
        f"(sha256 of its {len(store.vocab) - 2} words' vectors: recorded {record['sha256'][:12]}, "
        f"now {now[:12]}). Put back the file it was built with, or train a model on these vectors."
    )


def test_a_missing_source_falls_back_to_unk_with_a_warning(trained, tmp_path):
    ckpt, store = trained
    gone = tmp_path / "gone.txt"
    path = with_record(ckpt, tmp_path / "c.pt", {**store.manifest["word_vectors"], "source": str(gone)})
    video = write_video(tmp_path / "v.h5", clip_rows(store, store.split("test")[0].video), 10.0)
    r = ground([str(video), KITE, "desert in a kite", "--checkpoint", str(path), "--json"])
    assert r.exit_code == 0, r.output
    warning = (f"Warning: the word vectors {gone} that the checkpoint {path} was built with are not "
               f"available (the file does not exist); words outside its vocabulary are read as <unk>")
    assert " ".join(r.stderr.split()).count(warning) == 1
    assert unknown_warning(store) in " ".join(r.stderr.split())
    p = predictor(path)
    np.testing.assert_array_equal(p.encode([KITE]), predictor(ckpt, False).encode([KITE]))


def test_a_checkpoint_without_the_record_loads_and_reads_unk(trained, tmp_path):
    ckpt, store = trained
    path = with_record(ckpt, tmp_path / "old.pt", None)
    p = predictor(path)
    assert p.words is None
    ids = p.encode([KITE])[0]
    assert {int(ids[tokenize(KITE).index(w)]) for w in NEW} == {store.vocab.index(UNK)}
    video = write_video(tmp_path / "v.h5", clip_rows(store, store.split("test")[0].video), 10.0)
    r = ground([str(video), KITE, "--checkpoint", str(path), "--json"])
    assert r.exit_code == 0, r.output
    assert unknown_warning(store) in " ".join(r.stderr.split())


@pytest.mark.parametrize("kind, detail", [
    ("short", "words are not there"),  # the file lacks vocabulary words
    ("dim", "3-d vectors, not 50-d"),
])  # fmt: skip
def test_other_sources_are_refused_with_what_differs(trained, tmp_path, kind, detail):
    from fsan_cli.core.errors import FsanError
    from fsan_cli.core.text import WordSource

    _, store = trained
    path = tmp_path / "g.txt"
    words, dim = (store.vocab[2:5], 50) if kind == "short" else (store.vocab[2:], 3)
    path.write_text("".join(f"{w}{' 0.1' * dim}\n" for w in [*words, "desert"]), encoding="utf-8")
    record = {**store.manifest["word_vectors"], "source": str(path)}
    source = WordSource.of(record, store.vocab, "the checkpoint c.pt")
    with pytest.raises(FsanError, match=detail):
        source.lookup(["desert"])


def test_training_refuses_a_changed_source_before_it_starts(trained, tmp_path):
    from fsan_cli.core.errors import FsanError

    _, store = trained
    txt = glove_text(tmp_path / "g.txt", store, True)
    changed = load_store(store.path)
    changed.manifest["word_vectors"] = {**store.manifest["word_vectors"], "source": str(txt)}
    val = [Query(store.videos[0]["video"], "a person opens the desert", 10.0)]
    with pytest.raises(FsanError, match=r"Put back the file it was built with, or run `fsan prepare` again"):
        resident.val_words(changed, val, 20)
