"""The embedder seam: what the retrieval service needs from an embedding model.

The service only calls `embed`, reads `tokenizer` (chunking must count the same
tokens the model sees) and `max_tokens`, and names the model by `MODEL_NAME` and
`DIMENSION` in each collection's metadata. `services.embedding.embedder.Embedder`
(all-MiniLM-L6-v2 in-process) is the default; a client of a Triton-served model
with the same five members drops in through `app.build_service(settings, embedder=...)`.
Collections remember which model embedded them, and a mismatch is refused
(FAILED_PRECONDITION) instead of mixing vector spaces.
"""

import time
from typing import Protocol

import numpy as np
from tokenizers import Tokenizer

from services.retrieval import metrics


class TextEmbedder(Protocol):
    MODEL_NAME: str
    DIMENSION: int
    max_tokens: int
    tokenizer: Tokenizer

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), DIMENSION) float32, L2-normalised rows."""


class ObservedEmbedder:
    """Wraps an embedder to record batch sizes and time per source (ingest, query, embed)."""

    def __init__(self, inner: TextEmbedder, source: str):
        self.inner = inner
        self.MODEL_NAME = inner.MODEL_NAME
        self.DIMENSION = inner.DIMENSION
        self.max_tokens = inner.max_tokens
        self.tokenizer = inner.tokenizer
        self._batch = metrics.EMBED_BATCH_SIZE.labels(source)
        self._seconds = metrics.EMBED_SECONDS.labels(source)

    def embed(self, texts: list[str]) -> np.ndarray:
        start = time.perf_counter()
        vectors = self.inner.embed(texts)
        self._seconds.observe(time.perf_counter() - start)
        self._batch.observe(len(texts))
        return vectors
