"""Documents to storable chunks: chunking, dense embeddings and sparse vectors.

Nothing here writes: a batch is fully prepared (and can fail) before the store
sees any of it.
"""

import asyncio
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from llmsuite.retrieval.v1 import retrieval_pb2

from services.common.errors import InvalidArgument
from services.retrieval.chunking import Chunk, chunk_text, plain_tokenizer, truncate_tokens
from services.retrieval.embedding import TextEmbedder
from services.retrieval.filters import numeric
from services.retrieval.sparse import SparseEncoder

# [CLS] and [SEP] take two places of the model's window.
SPECIAL_TOKENS = 2


@dataclass
class PreparedChunk:
    document_id: str
    chunk: Chunk
    # What the model embeds: the (possibly shortened) title, a newline, the chunk.
    embed_input: str
    # Model input tokens, special tokens included.
    tokens: int
    payload: dict[str, Any]


@dataclass
class PreparedBatch:
    chunks: list[PreparedChunk]
    # Chunks per document id: a re-ingested document's chunks from this count on are stale.
    chunk_counts: dict[str, int]
    dense: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    sparse: list[tuple[list[int], list[float]]] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(c.tokens for c in self.chunks)


class DocumentChunker:
    """Splits documents into chunks that fit the embedding model's window with their title."""

    def __init__(self, tokenizer, *, window: int, chunk_tokens: int, overlap: int, max_title_tokens: int):
        self._tokenizer = plain_tokenizer(tokenizer)
        self._budget = min(chunk_tokens, window) - SPECIAL_TOKENS
        # The title may take at most half the window, so text always gets the other half.
        self._max_title = min(max_title_tokens, self._budget // 2)
        self._overlap = overlap

    @classmethod
    def for_embedder(cls, embedder: TextEmbedder, settings) -> "DocumentChunker":
        """The chunker the service uses: the embedder's tokenizer and window, the settings' sizes."""
        return cls(embedder.tokenizer, window=embedder.max_tokens, chunk_tokens=settings.chunk_tokens,
                   overlap=settings.chunk_overlap, max_title_tokens=settings.max_title_tokens)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def split(self, doc: retrieval_pb2.Document) -> list[PreparedChunk]:
        title, title_tokens = truncate_tokens(doc.title.strip(), self._tokenizer, self._max_title)
        body = self._budget - title_tokens
        chunks = chunk_text(doc.text, self._tokenizer, body, min(self._overlap, body // 2))
        metadata = dict(doc.metadata)
        numbers = {key: number for key, value in metadata.items() if (number := numeric(value)) is not None}
        prepared = []
        for chunk in chunks:
            payload = {
                "document_id": doc.id, "chunk_index": chunk.index, "title": doc.title, "text": chunk.text,
                "start": chunk.start, "end": chunk.end, "metadata": metadata, "metadata_num": numbers,
            }
            embed_input = f"{title}\n{chunk.text}" if title else chunk.text
            prepared.append(PreparedChunk(doc.id, chunk, embed_input, chunk.tokens + title_tokens + SPECIAL_TOKENS,
                                          payload))
        return prepared


class Ingestor:
    """Prepares batches: chunk (checked against the chunk limit), embed, encode sparse."""

    def __init__(self, chunker: DocumentChunker, embedder: TextEmbedder, sparse: SparseEncoder, *,
                 batch_size: int, max_chunks: int):
        self.chunker = chunker
        self.embedder = embedder
        self.sparse = sparse
        self._batch_size = batch_size
        self._max_chunks = max_chunks

    def chunk(self, docs: Sequence[retrieval_pb2.Document]) -> PreparedBatch:
        chunks: list[PreparedChunk] = []
        counts: dict[str, int] = {}
        for i, doc in enumerate(docs):
            doc_chunks = self.chunker.split(doc)
            if not doc_chunks:
                raise InvalidArgument(f"documents[{i}].text has no tokens to index", field=f"documents[{i}].text")
            counts[doc.id] = len(doc_chunks)
            chunks.extend(doc_chunks)
            if len(chunks) > self._max_chunks:
                raise InvalidArgument(
                    f"this request makes more than {self._max_chunks} chunks (at documents[{i}]); "
                    "send fewer or smaller documents per request", field="documents", reason="BATCH_TOO_LARGE")
        return PreparedBatch(chunks, counts)

    async def prepare(self, docs: Sequence[retrieval_pb2.Document]) -> PreparedBatch:
        batch = await asyncio.to_thread(self.chunk, docs)
        texts = [c.embed_input for c in batch.chunks]
        batch.dense = await self.embed_sorted(texts, [c.tokens for c in batch.chunks])
        batch.sparse = await asyncio.to_thread(lambda: [self.sparse.document(t) for t in texts])
        return batch

    async def embed_sorted(self, texts: list[str], lengths: list[int]) -> np.ndarray:
        """Embeds in forward passes of similar-length texts, so little compute goes to padding.

        One pass per thread hop keeps the event loop free, and lets queries take the
        embedder between two ingest passes.
        """
        order = np.argsort(np.asarray(lengths), kind="stable")
        out = np.zeros((len(texts), self.embedder.DIMENSION), dtype=np.float32)
        for begin in range(0, len(order), self._batch_size):
            rows = order[begin:begin + self._batch_size]
            out[rows] = await asyncio.to_thread(self.embedder.embed, [texts[i] for i in rows])
        return out
