"""A document's stored vector does not depend on the documents ingested with it (int8 ingest model)."""

import numpy as np

from services.embedding.embedder import Embedder
from services.retrieval.ingest import Ingestor
from services.retrieval.sparse import SparseEncoder

DOCS = ["Mitochondria generate most of the chemical energy of the cell.",
        "The Berlin Wall fell in 1989. " * 20,
        "Qdrant stores vectors with payloads and filters on them.",
        "hi"]


async def test_ingest_vectors_do_not_depend_on_their_batch():
    embedder = Embedder(quantize=True, max_tokens=128)
    ingestor = Ingestor(None, embedder, SparseEncoder(k1=1.2, b=0.75, avg_len=100), batch_size=32, max_chunks=100)
    lengths = [embedder.count_tokens(doc) for doc in DOCS]
    together = await ingestor.embed_sorted(DOCS, lengths)
    for i, doc in enumerate(DOCS):
        alone = await ingestor.embed_sorted([doc], [lengths[i]])
        assert np.abs(together[i] - alone[0]).max() <= 1e-6, doc
    with_others = await ingestor.embed_sorted(DOCS + ["another text " * 30], lengths + [60])
    assert np.abs(with_others[:len(DOCS)] - together).max() <= 1e-6
