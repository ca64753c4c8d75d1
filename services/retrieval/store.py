"""Qdrant storage of tenant-owned collections of chunks.

One code path for both deployments: `QdrantClient(path=...)` (embedded local mode,
the default; one process per directory) or `QdrantClient(url=...)` (a server or
cluster). Methods are synchronous and called from worker threads. The embedded
store is not thread-safe, so its calls are serialised by a lock; a server client
is, so calls to a server run concurrently.

Each (tenant, collection) is its own Qdrant collection (see ids.py and the
README): a search or delete names one physical collection, which is checked to
belong to the caller before use, so no filter mistake can reach another tenant.
"""

import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from services.common.errors import (AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted, ServiceError,
                                   Unavailable)
from services.retrieval import ids, local_speedups, metrics
from services.retrieval.config import RetrievalSettings
from services.retrieval.ingest import PreparedBatch

log = logging.getLogger(__name__)

DENSE = "dense"
SPARSE = "bm25"
# Names how sparse vectors are made; a collection written by another scheme is refused.
SPARSE_SCHEME = "bm25-snowball-crc32/v1"
RESULT_FIELDS = ["document_id", "chunk_index", "text", "title", "metadata"]
_SCROLL_PAGE = 1024


@dataclass(frozen=True)
class CollectionStats:
    name: str
    chunks: int
    embedding_model: str
    dimension: int


@dataclass(frozen=True)
class Hit:
    document_id: str
    chunk_index: int
    text: str
    title: str
    score: float
    metadata: dict[str, str]


class Store:
    def __init__(self, settings: RetrievalSettings, *, model_name: str, dimension: int):
        self._settings = settings
        self.model_name = model_name
        self.dimension = dimension
        self.local = not settings.qdrant_url
        # Embedded mode with the checked qdrant-client: searches run local_speedups' direct path.
        self._fast_local = False
        if self.local:
            self._fast_local = local_speedups.install()
            Path(settings.qdrant_path).mkdir(parents=True, exist_ok=True)
            self._client = QdrantClient(path=settings.qdrant_path)
            self._lock: contextlib.AbstractContextManager = threading.Lock()
        else:
            self._client = QdrantClient(url=settings.qdrant_url, api_key=settings.qdrant_api_key or None,
                                        timeout=int(settings.qdrant_timeout_s))
            self._lock = contextlib.nullcontext()
        # Qdrant names of collections already checked to belong to their tenant.
        self._verified: set[str] = set()

    def close(self) -> None:
        with self._lock:
            self._client.close()

    def check(self) -> None:
        """Fails if the store cannot be reached (a server that is down, a bad key)."""
        with self._guard():
            self._client.get_collections()

    @contextlib.contextmanager
    def _guard(self):
        """Holds the lock and maps storage failures to UNAVAILABLE without leaking their text."""
        with self._lock:
            try:
                yield
            except UnexpectedResponse as err:
                if err.status_code == 404:
                    raise NotFound("collection not found") from err
                log.error("qdrant call failed with HTTP %s", err.status_code, exc_info=err)
                raise Unavailable("vector store error; retry later", retry_after_s=1.0) from err
            except (ConnectionError, TimeoutError, OSError) as err:
                log.error("qdrant unreachable", exc_info=err)
                raise Unavailable("vector store unreachable; retry later", retry_after_s=1.0) from err

    # Collections

    def _owned(self, tenant: str, name: str) -> str:
        """The Qdrant name of the tenant's collection; NotFound unless it exists and is theirs."""
        qname = ids.qdrant_collection(tenant, name)
        if qname in self._verified:
            return qname
        if not self._client.collection_exists(qname):
            raise NotFound(f"collection {name!r} not found", reason="COLLECTION_NOT_FOUND")
        meta = self._client.get_collection(qname).config.metadata or {}
        if meta.get("tenant") != tenant or meta.get("name") != name:
            # A hash collision or a foreign collection: never reveal that it exists.
            raise NotFound(f"collection {name!r} not found", reason="COLLECTION_NOT_FOUND")
        if meta.get("embedding_model") != self.model_name or meta.get("dimension") != self.dimension:
            raise FailedPrecondition(
                f"collection {name!r} was embedded with {meta.get('embedding_model')} "
                f"({meta.get('dimension')} dims); this service embeds with {self.model_name}: re-ingest it",
                reason="EMBEDDING_MODEL_MISMATCH")
        if meta.get("sparse") != SPARSE_SCHEME:
            raise FailedPrecondition(f"collection {name!r} has sparse vectors of another scheme; re-ingest it",
                                     reason="SPARSE_SCHEME_MISMATCH")
        self._verified.add(qname)
        return qname

    def _tenant_collections(self, tenant: str) -> list[tuple[str, str]]:
        found = []
        for collection in self._client.get_collections().collections:
            name = ids.logical_name(tenant, collection.name)
            if name is not None:
                found.append((name, collection.name))
        return sorted(found)

    def _stats(self, name: str, qname: str) -> CollectionStats:
        chunks = self._client.count(qname, exact=True).count
        return CollectionStats(name, chunks, self.model_name, self.dimension)

    def _create(self, tenant: str, name: str) -> str:
        if len(self._tenant_collections(tenant)) >= self._settings.max_collections_per_tenant:
            raise ResourceExhausted(
                f"tenant already has {self._settings.max_collections_per_tenant} collections; delete one first",
                reason="COLLECTION_LIMIT")
        qname = ids.qdrant_collection(tenant, name)
        self._client.create_collection(
            qname,
            # Every vector stored or searched is L2-normalised (the embedder's output, and
            # query_vector after validation), so dot product is cosine similarity without
            # the per-query re-normalisation of all stored vectors that embedded Qdrant does
            # for COSINE (about 10 ms per query at 10,000 chunks here).
            vectors_config={DENSE: models.VectorParams(size=self.dimension, distance=models.Distance.DOT)},
            sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
            metadata={"tenant": tenant, "name": name, "embedding_model": self.model_name,
                      "dimension": self.dimension, "sparse": SPARSE_SCHEME},
        )
        if not self.local:
            # Stale-chunk cleanup and Delete filter by document; a server needs indexes
            # for that (embedded mode scans and has no use for them).
            self._client.create_payload_index(qname, "document_id", models.PayloadSchemaType.KEYWORD)
            self._client.create_payload_index(qname, "chunk_index", models.PayloadSchemaType.INTEGER)
        self._verified.add(qname)
        log.info("collection created", extra={"collection": name})
        return qname

    def create_collection(self, tenant: str, name: str) -> CollectionStats:
        with self._guard():
            if self._client.collection_exists(ids.qdrant_collection(tenant, name)):
                raise AlreadyExists(f"collection {name!r} already exists", reason="COLLECTION_EXISTS")
            return self._stats(name, self._create(tenant, name))

    def list_collections(self, tenant: str) -> list[CollectionStats]:
        with self._guard():
            return [self._stats(name, qname) for name, qname in self._tenant_collections(tenant)
                    if self._is_owned(tenant, name)]

    def _is_owned(self, tenant: str, name: str) -> bool:
        try:
            self._owned(tenant, name)
        except (NotFound, FailedPrecondition):
            return False
        return True

    def delete_collection(self, tenant: str, name: str) -> None:
        with self._guard():
            qname = self._owned(tenant, name)
            self._verified.discard(qname)
            self._client.delete_collection(qname)
        log.info("collection deleted", extra={"collection": name})

    # Points

    def write(self, tenant: str, name: str, batch: PreparedBatch) -> int:
        """Upserts a prepared batch (creating the collection if needed); returns stale chunks removed.

        Points are written before stale chunks are removed, so a reader never sees a
        document with neither its old nor its new chunks.
        """
        points = [
            models.PointStruct(
                id=ids.point_id(tenant, name, chunk.document_id, chunk.chunk.index),
                vector={DENSE: dense.tolist(), SPARSE: models.SparseVector(indices=sparse[0], values=sparse[1])},
                payload=chunk.payload,
            )
            for chunk, dense, sparse in zip(batch.chunks, batch.dense, batch.sparse)
        ]
        step = self._settings.write_batch_points
        with self._guard():
            try:
                qname = self._owned(tenant, name)
            except NotFound:
                qname = self._create(tenant, name)
            written = 0
            try:
                for begin in range(0, len(points), step):
                    self._client.upsert(qname, points[begin:begin + step], wait=True)
                    written += len(points[begin:begin + step])
                # A document's chunks from its new chunk count on are left from a longer version.
                stale = self._chunks_from(qname, batch.chunk_counts)
                if stale:
                    self._client.delete(qname, models.PointIdsList(points=stale), wait=True)
            except ServiceError:
                raise
            except Exception as err:
                log.error("storing a batch failed after %d of %d chunks", written, len(points), exc_info=err)
                raise Unavailable(
                    f"storing the batch failed after {written} of {len(points)} chunks were written; retry the whole "
                    "batch (point ids are deterministic: a retry replaces chunks, never duplicates them)",
                    reason="PARTIAL_WRITE", retry_after_s=1.0) from err
        metrics.CHUNKS_DELETED.labels("reingest").inc(len(stale))
        return len(stale)

    def _scroll_ids(self, qname: str, flt: models.Filter, fields: Sequence[str]) -> list[models.Record]:
        records: list[models.Record] = []
        offset = None
        while True:
            page, offset = self._client.scroll(qname, scroll_filter=flt, limit=_SCROLL_PAGE, offset=offset,
                                               with_payload=list(fields), with_vectors=False)
            records.extend(page)
            if offset is None:
                return records

    def _chunks_from(self, qname: str, first: dict[str, int]) -> list:
        """Ids of the stored chunks of each document in `first` from chunk index first[document] on."""
        if self._fast_local:
            collection = local_speedups.local_collection_of(self._client, qname)
            return local_speedups.points_where(
                collection, lambda p: p.get("document_id") in first and p["chunk_index"] >= first[p["document_id"]])
        flt = models.Filter(must=[models.FieldCondition(key="document_id", match=models.MatchAny(any=list(first)))])
        return [record.id for record in self._scroll_ids(qname, flt, ["document_id", "chunk_index"])
                if record.payload["chunk_index"] >= first.get(record.payload["document_id"], 0)]

    def delete_documents(self, tenant: str, name: str, document_ids: Sequence[str]) -> int:
        with self._guard():
            qname = self._owned(tenant, name)
            found = self._chunks_from(qname, dict.fromkeys(document_ids, 0))
            if found:
                self._client.delete(qname, models.PointIdsList(points=found), wait=True)
        metrics.CHUNKS_DELETED.labels("delete").inc(len(found))
        return len(found)

    def search(self, tenant: str, name: str, *, dense: np.ndarray | None, sparse: tuple[list[int], list[float]] | None,
               limit: int, flt: models.Filter | None, score_threshold: float | None) -> list[Hit]:
        """Dense, sparse, or (both given) hybrid search fused with weighted RRF."""
        settings = self._settings
        sparse_query = models.SparseVector(indices=sparse[0], values=sparse[1]) if sparse and sparse[0] else None
        # (vector name, query, fusion weight) of each ranking; a query without terms has no sparse ranking.
        sources = []
        if dense is not None:
            sources.append((DENSE, dense, settings.rrf_dense_weight))
        if sparse_query is not None:
            sources.append((SPARSE, sparse_query, settings.rrf_sparse_weight))
        if not sources:
            return []
        hybrid = dense is not None and sparse is not None
        candidates = max(limit, settings.hybrid_candidates)
        with self._guard():
            qname = self._owned(tenant, name)
            if self._fast_local:
                collection = local_speedups.local_collection_of(self._client, qname)
                if hybrid:
                    found = local_speedups.fused(collection, sources, candidates=candidates, limit=limit, flt=flt,
                                                 rrf_k=settings.rrf_k)
                else:
                    found = local_speedups.nearest(collection, *sources[0][:2], limit=limit, flt=flt,
                                                   score_threshold=score_threshold)
            else:
                found = [(p.payload, p.score) for p in self._query_points(qname, sources, hybrid, candidates, limit,
                                                                          flt, score_threshold)]
        return [Hit(payload["document_id"], payload["chunk_index"], payload["text"], payload.get("title", ""), score,
                    dict(payload.get("metadata") or {})) for payload, score in found]

    def _query_points(self, qname: str, sources: list, hybrid: bool, candidates: int, limit: int,
                      flt: models.Filter | None, score_threshold: float | None) -> list[models.ScoredPoint]:
        """The same search through the Query API (a Qdrant server, or another qdrant-client version)."""
        def vector(query):
            return query.tolist() if isinstance(query, np.ndarray) else query

        if hybrid:
            result = self._client.query_points(
                qname, prefetch=[models.Prefetch(query=vector(query), using=using, limit=candidates, filter=flt)
                                 for using, query, _ in sources],
                query=models.RrfQuery(rrf=models.Rrf(k=self._settings.rrf_k, weights=[w for _, _, w in sources])),
                limit=limit, with_payload=RESULT_FIELDS)
        else:
            using, query, _ = sources[0]
            result = self._client.query_points(qname, query=vector(query), using=using, limit=limit, query_filter=flt,
                                               score_threshold=score_threshold, with_payload=RESULT_FIELDS)
        return result.points
