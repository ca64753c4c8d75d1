"""RetrievalService: collections, ingest, search and embeddings for the caller's tenant.

The tenant always comes from the request context (set by the interceptor from the
gateway's identity header), never from a request field.
"""

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import AsyncIterator

import numpy as np
from llmsuite.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc

from services.common.context import tenant_var
from services.embedding.embedder import BatchingEmbedder
from services.common.errors import InvalidArgument, Unavailable
from services.retrieval import filters, metrics, validation
from services.retrieval.config import RetrievalSettings
from services.retrieval.ingest import Ingestor, PreparedBatch
from services.retrieval.sparse import SparseEncoder
from services.retrieval.store import CollectionStats, Store

_MODES = {
    retrieval_pb2.SEARCH_MODE_UNSPECIFIED: "hybrid",
    retrieval_pb2.SEARCH_MODE_HYBRID: "hybrid",
    retrieval_pb2.SEARCH_MODE_DENSE: "dense",
    retrieval_pb2.SEARCH_MODE_SPARSE: "sparse",
}


def _info(stats: CollectionStats) -> retrieval_pb2.CollectionInfo:
    return retrieval_pb2.CollectionInfo(name=stats.name, chunks=stats.chunks, embedding_model=stats.embedding_model,
                                        dimension=stats.dimension)


@dataclass
class Components:
    """What the servicer works with; built during warm-up (the model and store take seconds to load)."""

    store: Store
    ingestor: Ingestor
    # Separate micro-batchers, so that a large Embed call does not delay searches' queries.
    query_embedder: BatchingEmbedder
    rpc_embedder: BatchingEmbedder
    sparse: SparseEncoder


class QueryVectorCache:
    """The embeddings of recent queries, per tenant: a repeated search skips embedding.

    The key is (tenant, exact query text), so one tenant's queries never answer
    another's, not even through timing. Used from the event loop only (no lock).
    """

    def __init__(self, entries: int):
        self._entries = entries
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    async def get(self, tenant: str, query: str, embedder: BatchingEmbedder) -> np.ndarray:
        key = (tenant, query)
        vector = self._vectors.get(key)
        if vector is not None:
            self._vectors.move_to_end(key)
            return vector
        vector = await embedder.embed_one(query)
        if self._entries:
            vector.flags.writeable = False  # shared by later searches
            self._vectors[key] = vector
            if len(self._vectors) > self._entries:
                self._vectors.popitem(last=False)
        return vector


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServiceServicer):
    def __init__(self, settings: RetrievalSettings):
        self._settings = settings
        self._components: Components | None = None
        self._query_vectors = QueryVectorCache(settings.query_cache_entries)

    def attach(self, components: Components) -> None:
        self._components = components

    def _ready(self) -> Components:
        if self._components is None:
            raise Unavailable("retrieval service is warming up", retry_after_s=1.0)
        return self._components

    @property
    def _store(self) -> Store:
        return self._ready().store

    @property
    def _ingestor(self) -> Ingestor:
        return self._ready().ingestor

    @property
    def _query_embedder(self) -> BatchingEmbedder:
        return self._ready().query_embedder

    @property
    def _rpc_embedder(self) -> BatchingEmbedder:
        return self._ready().rpc_embedder

    @property
    def _sparse(self) -> SparseEncoder:
        return self._ready().sparse

    # Collections

    async def CreateCollection(self, request, context):
        name = validation.collection_name(request.name, "name")
        stats = await asyncio.to_thread(self._store.create_collection, tenant_var.get(), name)
        return retrieval_pb2.CreateCollectionResponse(collection=_info(stats))

    async def ListCollections(self, request, context):
        found = await asyncio.to_thread(self._store.list_collections, tenant_var.get())
        return retrieval_pb2.ListCollectionsResponse(collections=[_info(s) for s in found])

    async def DeleteCollection(self, request, context):
        name = validation.collection_name(request.name, "name")
        await asyncio.to_thread(self._store.delete_collection, tenant_var.get(), name)
        return retrieval_pb2.DeleteCollectionResponse()

    # Ingest

    async def _prepare(self, docs) -> PreparedBatch:
        validation.documents(docs, self._settings)
        return await self._ingestor.prepare(docs)

    async def _write(self, tenant: str, collection: str, batch: PreparedBatch) -> PreparedBatch:
        await asyncio.to_thread(self._store.write, tenant, collection, batch)
        metrics.DOCUMENTS_INGESTED.inc(len(batch.chunk_counts))
        metrics.CHUNKS_INGESTED.inc(len(batch.chunks))
        metrics.TOKENS_EMBEDDED.inc(batch.tokens)
        return batch

    async def Upsert(self, request, context):
        collection = validation.collection_name(request.collection)
        batch = await self._prepare(request.documents)
        await self._write(tenant_var.get(), collection, batch)
        return retrieval_pb2.UpsertResponse(documents=len(batch.chunk_counts), chunks=len(batch.chunks))

    async def UpsertStream(self, request_iterator, context) -> AsyncIterator[retrieval_pb2.UpsertStreamResponse]:
        """Embeds batch n+1 while batch n is being written; reports after each write.

        A failing batch ends the stream with an error, after the progress of every
        batch stored before it has been reported: what the caller was last told is
        exactly what is stored.
        """
        tenant = tenant_var.get()
        collection = ""
        done = retrieval_pb2.UpsertStreamResponse()
        pending: asyncio.Task | None = None
        try:
            async for index, request in _enumerate(request_iterator):
                try:
                    if index == 0:
                        collection = validation.collection_name(request.collection)
                    elif request.collection and request.collection != collection:
                        raise InvalidArgument(f"message {index} names collection {request.collection!r}; a stream "
                                              f"writes to one collection ({collection!r})", field="collection")
                    batch = await self._prepare(request.documents)
                except Exception:
                    if pending is not None:
                        written = await pending
                        pending = None
                        yield _progress(done, written)
                    raise
                if pending is not None:
                    written = await pending
                    pending = None
                    yield _progress(done, written)
                pending = asyncio.create_task(self._write(tenant, collection, batch))
            if pending is not None:
                written = await pending
                pending = None
                yield _progress(done, written)
        finally:
            if pending is not None and not pending.done():
                # The caller hung up: the write in flight is committed to, so let it finish.
                await asyncio.shield(pending)

    async def Delete(self, request, context):
        collection = validation.collection_name(request.collection)
        validation.document_ids(request.document_ids, self._settings)
        deleted = await asyncio.to_thread(self._store.delete_documents, tenant_var.get(), collection,
                                          list(request.document_ids))
        return retrieval_pb2.DeleteResponse(chunks_deleted=deleted)

    # Search

    async def Search(self, request, context):
        start = time.perf_counter()
        settings = self._settings
        collection = validation.collection_name(request.collection)
        if request.mode not in _MODES:
            raise InvalidArgument(f"mode {request.mode} is not a SearchMode", field="mode")
        mode = _MODES[request.mode]
        top_k = validation.top_k(request.top_k, settings)
        query = request.query.strip()
        if len(query) > settings.max_query_chars:
            raise InvalidArgument(f"query has {len(query)} characters; the limit is {settings.max_query_chars}",
                                  field="query")
        vector = validation.query_vector(request.query_vector, self._store.dimension)
        if not query and (mode != "dense" or vector is None):
            raise InvalidArgument("query is empty (only a dense search can run on query_vector alone)", field="query")
        threshold = request.score_threshold if request.HasField("score_threshold") else None
        if threshold is not None and mode == "hybrid":
            raise InvalidArgument("score_threshold applies to dense and sparse modes: fused hybrid scores are "
                                  "rank-based; set mode", field="score_threshold")
        flt = filters.to_qdrant(request.filter, settings.max_filter_conditions)

        tenant = tenant_var.get()
        dense = sparse = None
        if mode in ("dense", "hybrid"):
            dense = await self._query_vectors.get(tenant, query, self._query_embedder) if vector is None else vector
        if mode in ("sparse", "hybrid"):
            sparse = self._sparse.query(query)
        # Grouped hits fetch more chunks, so that top_k distinct documents remain.
        limit = top_k * settings.group_overfetch if request.group_by_document else top_k
        hits = await asyncio.to_thread(self._store.search, tenant, collection, dense=_array(dense),
                                       sparse=sparse, limit=limit, flt=flt, score_threshold=threshold)
        if request.group_by_document:
            hits = _best_per_document(hits)
        hits = hits[:top_k]
        metrics.SEARCH_SECONDS.labels(mode).observe(time.perf_counter() - start)
        metrics.SEARCH_HITS.labels(mode).observe(len(hits))
        return retrieval_pb2.SearchResponse(hits=[
            retrieval_pb2.SearchHit(document_id=h.document_id, chunk_index=h.chunk_index, text=h.text, score=h.score,
                                    metadata=h.metadata, title=h.title)
            for h in hits])

    # Embeddings

    async def Embed(self, request, context):
        texts = list(request.texts)
        validation.embed_texts(texts, self._settings)
        vectors = await self._rpc_embedder.embed_many(texts)
        # The model's own tokenizer, as it was fed: the attention mask marks the real tokens.
        encodings = self._rpc_embedder.embedder.tokenizer.encode_batch(texts)
        return retrieval_pb2.EmbedResponse(
            embeddings=[retrieval_pb2.Embedding(values=row.tolist()) for row in vectors],
            model=self._store.model_name, dimension=self._store.dimension,
            input_tokens=sum(sum(encoding.attention_mask) for encoding in encodings))


def _array(vector) -> np.ndarray | None:
    return None if vector is None else np.asarray(vector, dtype=np.float32)


def _progress(done: retrieval_pb2.UpsertStreamResponse, batch: PreparedBatch) -> retrieval_pb2.UpsertStreamResponse:
    """Adds a stored batch to the stream's running totals and returns a copy to send."""
    done.documents_done += len(batch.chunk_counts)
    done.chunks_done += len(batch.chunks)
    return retrieval_pb2.UpsertStreamResponse(documents_done=done.documents_done, chunks_done=done.chunks_done)


def _best_per_document(hits):
    seen: set[str] = set()
    best = []
    for hit in hits:
        if hit.document_id not in seen:
            seen.add(hit.document_id)
            best.append(hit)
    return best


async def _enumerate(iterator):
    index = 0
    async for item in iterator:
        yield index, item
        index += 1
