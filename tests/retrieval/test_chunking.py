"""Token-aware chunking: window sizes, overlap, word boundaries, verbatim text."""

import pytest
from tokenizers import Tokenizer

from services.embedding.embedder import model_dir
from services.retrieval.chunking import chunk_text, plain_tokenizer, truncate_tokens
from services.retrieval.ingest import DocumentChunker
from llmsuite.retrieval.v1 import retrieval_pb2


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    # The embedder's tokenizer file, truncating as the embedder does, to show chunking does not.
    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=256)
    return plain_tokenizer(tok)


LONG = " ".join(f"Sentence {i} mentions immunohistochemistry and phosphorylation of protein kinase." for i in range(200))


def count(tokenizer, text):
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def test_short_text_is_one_chunk_equal_to_the_text(tokenizer):
    chunks = chunk_text("  Cats purr.  ", tokenizer, 64, 8)
    assert len(chunks) == 1
    assert chunks[0].text == "Cats purr." and chunks[0].index == 0
    assert chunks[0].tokens == count(tokenizer, "Cats purr.")


def test_empty_or_whitespace_text_has_no_chunks(tokenizer):
    assert chunk_text("", tokenizer, 64, 8) == []
    assert chunk_text(" \n\t ", tokenizer, 64, 8) == []


def test_long_text_chunks_fit_the_window_and_quote_the_text(tokenizer):
    chunks = chunk_text(LONG, tokenizer, 100, 20)
    assert len(chunks) > 10
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.tokens <= 100
        assert LONG[chunk.start:chunk.end] == chunk.text
        assert count(tokenizer, chunk.text) == chunk.tokens
    # The chunks together cover the whole text.
    assert chunks[0].start == 0 and chunks[-1].end == len(LONG)


def test_consecutive_chunks_overlap_and_break_between_words(tokenizer):
    chunks = chunk_text(LONG, tokenizer, 100, 20)
    for before, after in zip(chunks, chunks[1:]):
        assert after.start < before.end, "no overlap"
        shared = LONG[after.start:before.end]
        assert 10 <= count(tokenizer, shared) <= 40
        # Never cut inside a word: the characters around each boundary are not both letters.
        assert not (LONG[before.end - 1].isalnum() and before.end < len(LONG) and LONG[before.end].isalnum())
        assert not (after.start > 0 and LONG[after.start - 1].isalnum() and LONG[after.start].isalnum())


def test_no_overlap_partitions_the_tokens(tokenizer):
    chunks = chunk_text(LONG, tokenizer, 64, 0)
    assert sum(c.tokens for c in chunks) == count(tokenizer, LONG)


def test_a_word_longer_than_half_a_chunk_is_cut(tokenizer):
    # One word of 96 characters that the tokenizer splits into about 128 pieces (longer
    # words would become a single [UNK]).
    word = "qxzjvkwp" * 12
    chunks = chunk_text(f"start {word} end", tokenizer, 50, 5)
    assert len(chunks) > 2 and all(c.tokens <= 50 for c in chunks)


def test_bad_window_is_refused(tokenizer):
    with pytest.raises(ValueError):
        chunk_text("text", tokenizer, 10, 10)


def test_truncate_tokens_keeps_a_prefix(tokenizer):
    text, tokens = truncate_tokens(LONG, tokenizer, 12)
    assert LONG.startswith(text) and tokens == 12 and count(tokenizer, text) == 12
    assert truncate_tokens("short title", tokenizer, 12) == ("short title", 2)


def test_document_chunks_fit_the_model_window_with_their_title(tokenizer):
    chunker = DocumentChunker(tokenizer, window=256, chunk_tokens=256, overlap=32, max_title_tokens=48)
    doc = retrieval_pb2.Document(id="d", title="A title " * 40, text=LONG, metadata={"year": "2020", "src": "x"})
    chunks = chunker.split(doc)
    assert len(chunks) > 5
    for chunk in chunks:
        # Exactly what the model sees, with [CLS] and [SEP]: never above its window.
        assert count(tokenizer, chunk.embed_input) + 2 == chunk.tokens <= 256
        assert chunk.embed_input.startswith("A title") and chunk.embed_input.endswith(chunk.chunk.text)
        assert chunk.payload["metadata"] == {"year": "2020", "src": "x"}
        assert chunk.payload["metadata_num"] == {"year": 2020.0}
        assert chunk.payload["document_id"] == "d" and chunk.payload["title"] == doc.title
