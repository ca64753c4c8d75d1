"""Stage 3, documents: what retrieval finds for the question, placed within the token budget.

Retrieval down is a degradation (the answer comes without documents), not a failure.
"""

import logging
from typing import Sequence

from llmsuite.inference.v1 import inference_pb2

from services.common import tracing
from services.router.prompt import Document
from services.router.retrieval_client import RetrievalClient
from services.router.state import UPSTREAM_DOWN, RequestState
from services.router.tokens import estimate_tokens, truncate_tokens

log = logging.getLogger(__name__)

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


class Documents:
    def __init__(self, retrieval: RetrievalClient | None):
        self._retrieval = retrieval

    async def find(self, state: RequestState) -> list[Document]:
        """The documents for a RAG request (none for others), listed in the report's sources."""
        inference = state.request
        if not inference.retrieval_collection:
            return []
        with tracing.span("documents", {"llmsuite.retrieval.top_k": inference.retrieval_top_k}) as span:
            # A redacted question is searched as redacted, with its own embedding.
            try:
                hits = await self._retrieval.search(
                    inference.retrieval_collection, state.checked.turns[-1].content, inference.retrieval_top_k,
                    inference.retrieval_score_threshold, None if state.checked.redacted else state.vector,
                    state.deadline)
            except UPSTREAM_DOWN as err:
                state.deadline.check()
                log.warning("retrieval unavailable (%s); answering without context", err.message)
                state.report.degrade("retrieval_unavailable")
                span.set_attribute("llmsuite.degraded", "retrieval_unavailable")
                return []
            documents = assemble(hits, state.tenant.context_token_budget)
            span.set_attribute("llmsuite.retrieval.documents", len(documents))
        state.report.sources.extend(
            inference_pb2.Source(document_id=d.document_id, chunk_index=d.chunk_index, score=d.score)
            for d in documents)
        return documents
