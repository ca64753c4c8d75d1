"""Retrieved context: search hits placed into the prompt within a token budget."""

from typing import Sequence

from services.router.prompt import Document
from services.router.tokens import estimate_tokens, truncate_tokens

# Tokens the label and fence markers around each document take.
_DOCUMENT_OVERHEAD_TOKENS = 16


def assemble(hits: Sequence, budget_tokens: int) -> list[Document]:
    """Best hits first, each whole, until the next would pass the budget.

    When even the best hit does not fit, its beginning is used, so a small budget
    still gets some context rather than none.
    """
    documents: list[Document] = []
    used = 0
    for hit in hits:
        size = estimate_tokens(hit.text) + estimate_tokens(hit.title) + _DOCUMENT_OVERHEAD_TOKENS
        if used + size <= budget_tokens:
            documents.append(Document(hit.document_id, hit.chunk_index, hit.score, hit.text, hit.title))
            used += size
            continue
        if not documents:
            room = budget_tokens - estimate_tokens(hit.title) - _DOCUMENT_OVERHEAD_TOKENS
            text = truncate_tokens(hit.text, room)
            if text:
                documents.append(Document(hit.document_id, hit.chunk_index, hit.score, text, hit.title))
        break
    return documents
