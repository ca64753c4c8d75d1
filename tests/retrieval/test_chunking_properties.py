"""Properties of token-aware chunking, for any text and any valid window."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from services.embedding.embedder import model_dir
from services.retrieval.chunking import chunk_text, plain_tokenizer, truncate_tokens
from tests.properties import PROPERTIES

# Text with words, numbers, punctuation, long words and non-Latin scripts.
TEXT = st.one_of(
    st.text(max_size=400),
    st.lists(st.one_of(st.sampled_from(["immunohistochemistry", "the", "cell", "3.14", "—", "naïve", "日本語", "\n"]),
                       st.text(min_size=1, max_size=30)), max_size=80).map(" ".join),
)
WINDOWS = st.integers(1, 40).flatmap(lambda size: st.tuples(st.just(size), st.integers(0, size - 1)))


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return plain_tokenizer(Tokenizer.from_file(str(model_dir() / "tokenizer.json")))


@PROPERTIES
@given(TEXT, WINDOWS)
def test_chunks_quote_the_text_fit_the_window_and_cover_every_token(tokenizer, text, window):
    max_tokens, overlap = window
    chunks = chunk_text(text, tokenizer, max_tokens, overlap)
    tokens = tokenizer.encode(text, add_special_tokens=False).offsets
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    assert bool(chunks) == bool(tokens)
    for chunk in chunks:
        assert chunk.text == text[chunk.start:chunk.end] and chunk.text
        assert 1 <= chunk.tokens <= max_tokens
    for previous, chunk in zip(chunks, chunks[1:]):
        assert previous.start < chunk.start and previous.end < chunk.end  # always moving on
    for start, end in tokens:
        if end > start:
            assert any(chunk.start <= start and end <= chunk.end for chunk in chunks), (start, end)


SHORT_WORDS = st.lists(st.one_of(st.sampled_from(["immunohistochemistry", "the", "3.14", "naïve", "日本語", "\n"]),
                                 st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=6)),
                       max_size=80).map(" ".join)


@PROPERTIES
@given(SHORT_WORDS, st.integers(16, 64).flatmap(lambda size: st.tuples(st.just(size), st.integers(0, size // 2 - 1))))
def test_each_chunk_alone_fits_the_window_the_embedder_sees(tokenizer, text, window):
    # With the service's rule (overlap under half a chunk) and no word longer than half
    # a chunk, a chunk's text encodes on its own within the window, so the embedder
    # truncates nothing. (A cut word can encode to more pieces on its own.)
    max_tokens, overlap = window
    for chunk in chunk_text(text, tokenizer, max_tokens, overlap):
        assert len(tokenizer.encode(chunk.text, add_special_tokens=False).ids) <= max_tokens


@settings(PROPERTIES, max_examples=50)
@given(TEXT, st.integers(-2, 60))
def test_truncation_keeps_a_prefix_within_the_limit(tokenizer, text, limit):
    prefix, count = truncate_tokens(text, tokenizer, limit)
    assert text.startswith(prefix)
    assert count == len(tokenizer.encode(prefix, add_special_tokens=False).ids) or count == limit
    assert 0 <= count <= max(limit, 0)


@PROPERTIES
@given(st.text(max_size=50), st.integers(-5, 5), st.integers(-5, 5))
def test_invalid_windows_are_refused(tokenizer, text, max_tokens, overlap):
    if max_tokens >= 1 and 0 <= overlap < max_tokens:
        chunk_text(text, tokenizer, max_tokens, overlap)
    else:
        with pytest.raises(ValueError, match="need 0 <= overlap"):
            chunk_text(text, tokenizer, max_tokens, overlap)
