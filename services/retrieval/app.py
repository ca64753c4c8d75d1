"""Wires the retrieval servicer, embedder and store into a Service."""

import asyncio
import logging

from llmsuite.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc

from services.common.config import ConfigError
from services.embedding.embedder import BatchingEmbedder, Embedder
from services.common.server import Service
from services.retrieval.config import RetrievalSettings
from services.retrieval.embedding import ObservedEmbedder, TextEmbedder
from services.retrieval.ingest import DocumentChunker, Ingestor
from services.retrieval.servicer import Components, RetrievalServicer
from services.retrieval.sparse import SparseEncoder
from services.retrieval.store import Store

log = logging.getLogger(__name__)

SERVICE_NAME = retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name


def open_store(settings: RetrievalSettings, embedder: TextEmbedder) -> Store:
    try:
        return Store(settings, model_name=embedder.MODEL_NAME, dimension=embedder.DIMENSION)
    except RuntimeError as err:
        # Embedded Qdrant locks its directory; a second process cannot open it.
        if "already accessed" in str(err):
            raise ConfigError(f"retrieval.qdrant_path {settings.qdrant_path!r} is in use by another process "
                              "(embedded Qdrant allows one); stop it, or set LLMSUITE_RETRIEVAL_QDRANT_PATH") from err
        raise


def build_components(settings: RetrievalSettings, embedder: TextEmbedder,
                     document_embedder: TextEmbedder | None = None) -> Components:
    """Everything the servicer needs, from loaded embedders (synchronous; seconds).

    `embedder` serves queries and the Embed RPC; `document_embedder` (default: the
    same) embeds chunks on ingest. Both must embed into the same vector space.
    """
    store = open_store(settings, embedder)
    store.check()
    sparse = SparseEncoder(k1=settings.bm25_k1, b=settings.bm25_b, avg_len=settings.bm25_avg_len)
    chunker = DocumentChunker.for_embedder(embedder, settings)
    ingestor = Ingestor(chunker, ObservedEmbedder(document_embedder or embedder, "ingest"), sparse,
                        batch_size=settings.ingest_batch_size, max_chunks=settings.max_chunks_per_request)
    batching = dict(max_batch=settings.embed_max_batch, max_wait_ms=settings.embed_max_wait_ms)
    return Components(
        store=store, ingestor=ingestor, sparse=sparse,
        query_embedder=BatchingEmbedder(ObservedEmbedder(embedder, "query"), **batching),
        rpc_embedder=BatchingEmbedder(ObservedEmbedder(embedder, "embed"), **batching),
    )


def build_service(settings: RetrievalSettings, embedder: TextEmbedder | None = None) -> Service:
    """The service; `embedder` replaces the in-process all-MiniLM-L6-v2 (e.g. a Triton client)."""
    servicer = RetrievalServicer(settings)
    components: list[Components] = []

    async def warm_up() -> None:
        if embedder is None:
            model = await asyncio.to_thread(Embedder)
            # The query embedder has just verified the same weights file.
            documents = (await asyncio.to_thread(Embedder, quantize=True, verify=False)
                         if settings.quantize_ingest else model)
        else:
            model = documents = embedder
        built = await asyncio.to_thread(build_components, settings, model, documents)
        components.append(built)
        # The first forward pass initialises kernels; keep that off the first query.
        await built.query_embedder.embed_one("warm up")
        servicer.attach(built)
        log.info("store %s, embedder %s (ingest %s)", "embedded" if built.store.local else "server", model.MODEL_NAME,
                 "as given" if embedder is not None else "int8" if settings.quantize_ingest else "fp32")

    async def close() -> None:
        for built in components:
            await built.query_embedder.close()
            await built.rpc_embedder.close()
            await asyncio.to_thread(built.store.close)

    return Service(
        name="retrieval",
        settings=settings,
        service_names=[SERVICE_NAME],
        register=lambda server: retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(servicer, server),
        warm_up=warm_up,
        close=close,
    )
