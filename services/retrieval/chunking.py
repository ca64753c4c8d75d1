"""Token-aware chunking with overlap, using the embedder's own tokenizer.

Chunks are measured in the word-piece tokens the embedding model sees, so each
chunk fits the model's window exactly and nothing is silently truncated. Chunk
boundaries fall between words, and each chunk's text is a slice of the original
text (character offsets come from the tokenizer), so search results quote the
document verbatim.
"""

from dataclasses import dataclass

from tokenizers import Tokenizer


@dataclass(frozen=True)
class Chunk:
    """One window of a document's text."""

    index: int
    # Character offsets into the document text; text == document[start:end].
    start: int
    end: int
    text: str
    # Word-piece tokens of `text` (no special tokens).
    tokens: int


def plain_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """A copy of `tokenizer` without truncation and padding, for measuring whole texts.

    The embedder's tokenizer truncates to the model window; chunking needs every token.
    """
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def truncate_tokens(text: str, tokenizer: Tokenizer, max_tokens: int) -> tuple[str, int]:
    """The longest prefix of `text` with at most `max_tokens` tokens, and its token count."""
    if max_tokens <= 0 or not text:
        return "", 0
    offsets = tokenizer.encode(text, add_special_tokens=False).offsets
    if len(offsets) <= max_tokens:
        return text, len(offsets)
    return text[:offsets[max_tokens - 1][1]], max_tokens


def chunk_text(text: str, tokenizer: Tokenizer, max_tokens: int, overlap: int) -> list[Chunk]:
    """Splits `text` into chunks of at most `max_tokens` tokens, `overlap` tokens apart.

    Returns no chunk for text without tokens (empty or whitespace). A chunk ends at a
    word boundary unless one word is longer than half a chunk (then it is cut).
    """
    if max_tokens < 1 or not 0 <= overlap < max_tokens:
        raise ValueError(f"need 0 <= overlap ({overlap}) < max_tokens ({max_tokens})")
    encoding = tokenizer.encode(text, add_special_tokens=False)
    offsets = encoding.offsets
    words = encoding.word_ids
    total = len(offsets)
    chunks: list[Chunk] = []
    start = 0
    while start < total:
        end = min(start + max_tokens, total)
        if end < total:
            cut = end
            # Do not end inside a word: a word's pieces share one word id.
            while cut > start and words[cut] == words[cut - 1]:
                cut -= 1
            if cut - start > max_tokens // 2:
                end = cut
        first, last = offsets[start][0], offsets[end - 1][1]
        chunks.append(Chunk(len(chunks), first, last, text[first:last], end - start))
        if end == total:
            break
        next_start = max(end - overlap, start + 1)
        # Start the next chunk at the beginning of a word as well.
        while next_start > start + 1 and words[next_start] == words[next_start - 1]:
            next_start -= 1
        start = next_start
    return chunks
