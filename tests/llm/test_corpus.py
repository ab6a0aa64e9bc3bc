"""Corpora and their token windows."""

import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llm.corpus import _in_memory, load_corpus, text_sha256, token_batches
from tests.llm.tiny_models import WORDS, word_tokenizer, write_text_corpus

TOKENIZER = word_tokenizer()
BOS, EOS, PAD = TOKENIZER.bos_token_id, TOKENIZER.eos_token_id, TOKENIZER.pad_token_id


def test_local_folder_is_read_in_order_deduplicated_and_hashed(tmp_path):
    (tmp_path / "b.md").write_text("second file\n\nshared paragraph here")
    (tmp_path / "a.txt").write_text("first file\n\nshared paragraph here\n\nshared paragraph here")
    (tmp_path / "c.bin").write_text("not text")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.rst").write_text("  shared   paragraph\nhere ")  # same words, respaced
    corpus = load_corpus(str(tmp_path))
    documents = list(corpus.documents())
    assert documents == ["first file\n\nshared paragraph here", "second file"]
    assert corpus.sha256 == text_sha256(documents)
    (tmp_path / "b.md").write_text("second file, edited")
    assert load_corpus(str(tmp_path)).sha256 != corpus.sha256


def test_empty_folders_and_unknown_names_are_refused(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="no text files"):
        load_corpus(str(tmp_path))
    monkeypatch.setitem(sys.modules, "datasets", None)  # as on a machine without `datasets`
    with pytest.raises(ValueError, match="'no/such-dataset'.*needs the `datasets` package"):
        load_corpus("no/such-dataset")


def test_embedded_corpus_is_english_prose_without_repeated_paragraphs():
    corpus = load_corpus()
    documents = list(corpus.documents())
    assert corpus.name.startswith("python-docs-3.") and corpus.sha256 == text_sha256(documents)
    paragraphs = [p for d in documents for p in d.split("\n\n")]
    assert len(paragraphs) == len(set(paragraphs)) > 5000
    words = " ".join(paragraphs).lower().split()
    assert len(words) > 150_000
    assert sum(w in {"the", "a", "is", "of", "to", "and"} for w in words) > 0.1 * len(words)
    assert list(load_corpus().documents()) == documents  # the cached copy reads back the same


def _stream_tokens(documents):
    """The token stream token_batches promises: documents joined by EOS."""
    pieces = [TOKENIZER(d, add_special_tokens=False)["input_ids"] for d in documents if d]
    return sum(([EOS] * (i > 0) + piece for i, piece in enumerate(pieces)), [])


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=6).filter(any),
    context_length=st.integers(2, 12),
    batch_size=st.integers(1, 5),
)
def test_windows_cover_the_stream_once_with_special_positions_masked(
    lengths, context_length, batch_size
):
    documents = [
        " ".join(WORDS[(i + j) % len(WORDS)] for j in range(n)) for i, n in enumerate(lengths)
    ]
    corpus = _in_memory("words", documents)
    batches = list(token_batches(TOKENIZER, corpus, context_length, batch_size))
    assert all(len(b.input_ids_BT) == batch_size for b in batches[:-1])
    ids_NT = torch.cat([b.input_ids_BT for b in batches])
    mask_NT = torch.cat([b.attention_mask_BT for b in batches])
    keep_NT = torch.cat([b.keep_BT for b in batches])
    assert ids_NT.shape[1] == context_length and (ids_NT[:, 0] == BOS).all()
    # Unmasked positions in order are exactly the stream; kept ones are the stream's words.
    windows = [row[1:][m[1:].bool()].tolist() for row, m in zip(ids_NT, mask_NT, strict=True)]
    stream = _stream_tokens(documents)
    assert sum(windows, []) == stream
    assert all(len(w) == context_length - 1 for w in windows[:-1]) and windows[-1]
    assert ids_NT[keep_NT].tolist() == [t for t in stream if t != EOS]
    assert (ids_NT[~mask_NT.bool()] == PAD).all()
    again = list(token_batches(TOKENIZER, corpus, context_length, batch_size))
    assert torch.equal(torch.cat([b.input_ids_BT for b in again]), ids_NT)


def test_bad_window_shapes_are_refused(tmp_path):
    corpus = load_corpus(str(write_text_corpus(tmp_path / "text", n_files=1)))
    with pytest.raises(ValueError, match="context_length 1 must be >= 2"):
        next(token_batches(TOKENIZER, corpus, 1, 4))
    with pytest.raises(ValueError, match="batch_size 0"):
        next(token_batches(TOKENIZER, corpus, 8, 0))
