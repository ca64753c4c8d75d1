"""The router's client for the retrieval service: one embedding per request, and search."""

import numpy as np
from llmsuite.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc

from services.common.channels import upstream_channel
from services.common.context import outgoing_metadata
from services.common.resilience import Deadline
from services.router.config import RouterSettings
from services.router.upstream import upstream_for


class RetrievalClient:
    def __init__(self, settings: RouterSettings):
        self._channel = upstream_channel(settings.retrieval_url)
        self._stub = retrieval_pb2_grpc.RetrievalServiceStub(self._channel)
        self._cap = settings.retrieval_timeout_s
        self.upstream = upstream_for("retrieval", settings)

    async def embed(self, text: str, deadline: Deadline) -> np.ndarray:
        """The L2-normalised embedding of text."""
        request = retrieval_pb2.EmbedRequest(texts=[text])
        reply = await self.upstream.call(
            lambda timeout: self._stub.Embed(request, timeout=timeout, metadata=outgoing_metadata()),
            deadline, self._cap)
        return np.asarray(reply.embeddings[0].values, dtype=np.float32)

    async def search(self, collection: str, query: str, top_k: int, score_threshold: float | None,
                     vector: np.ndarray | None, deadline: Deadline) -> list[retrieval_pb2.SearchHit]:
        # Hybrid search ranks best, but its fused scores are rank-based: a score
        # threshold needs one of the scored modes, so dense search runs then.
        request = retrieval_pb2.SearchRequest(collection=collection, query=query, top_k=top_k,
                                              mode=retrieval_pb2.SEARCH_MODE_HYBRID)
        if score_threshold is not None:
            request.mode = retrieval_pb2.SEARCH_MODE_DENSE
            request.score_threshold = score_threshold
        if vector is not None:
            request.query_vector.extend(vector.tolist())
        reply = await self.upstream.call(
            lambda timeout: self._stub.Search(request, timeout=timeout, metadata=outgoing_metadata()),
            deadline, self._cap)
        return list(reply.hits)

    async def close(self) -> None:
        await self._channel.close()
