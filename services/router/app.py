"""Wires the router's pipeline, clients and stores into a Service."""

import logging

from llmsuite.generation.v1 import generation_pb2
from llmsuite.guardrails.v1 import guardrails_pb2
from llmsuite.inference.v1 import inference_pb2, inference_pb2_grpc
from llmsuite.retrieval.v1 import retrieval_pb2

from services.common.server import Service
from services.router.cache import ResponseCache
from services.router.config import RouterSettings
from services.router.generation_client import GenerationClient
from services.router.guardrails_client import GuardrailsClient
from services.router.pipeline import Pipeline
from services.router.prompt import SecretSource
from services.router.retrieval_client import RetrievalClient
from services.router.servicer import InferenceServicer
from services.router.sessions import SessionStore
from services.router.stores import MemoryStore, RedisStore

log = logging.getLogger(__name__)

# Envoy sends all reflection calls to the router, so that grpcurl can list and
# describe every service of the suite at the edge; the router holds their
# descriptors (it is a client of them all) and reports them here.
EDGE_SERVICES = [
    inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
    guardrails_pb2.DESCRIPTOR.services_by_name["GuardrailsService"].full_name,
    retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name,
    generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name,
]

# Semantic-cache scopes the in-process store keeps; each holds up to
# semantic_max_entries vectors, so this bounds its memory.
_MEMORY_SEMANTIC_SCOPES = 64


def build_service(settings: RouterSettings) -> Service:
    generation = GenerationClient(settings)
    guardrails = GuardrailsClient(settings) if settings.guardrails_url else None
    retrieval = RetrievalClient(settings) if settings.retrieval_url else None
    if guardrails is None:
        log.warning("guardrails_url is empty: requests are NOT checked by guardrails (development only)")
    if settings.redis_url:
        redis = RedisStore(settings.redis_url, settings.redis_timeout_s)
        answers = vectors = session_store = redis
        stores = [redis]
    else:
        answers = MemoryStore(settings.cache_max_entries)
        vectors = MemoryStore(_MEMORY_SEMANTIC_SCOPES)
        session_store = MemoryStore(settings.max_sessions)
        stores = [answers, vectors, session_store]
    pipeline = Pipeline(
        settings, generation, guardrails, retrieval,
        ResponseCache(answers, vectors, settings.semantic_max_entries),
        SessionStore(session_store, settings.session_max_turns, settings.session_ttl_s),
        SecretSource(settings.canary_key),
    )
    servicer = InferenceServicer(pipeline)

    async def warm_up() -> None:
        # Only generation gates readiness: without guardrails or retrieval the
        # router still answers (fails closed or degrades, per tenant policy).
        await generation.wait_ready()
        if settings.redis_url and not await stores[0].ping():
            log.warning("redis is not reachable; cache and sessions are skipped until it is")

    async def close() -> None:
        for client in (generation, guardrails, retrieval):
            if client is not None:
                await client.close()
        for store in stores:
            await store.close()

    return Service(
        name="router",
        settings=settings,
        service_names=[EDGE_SERVICES[0]],
        reflection_names=EDGE_SERVICES[1:],
        register=lambda server: inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server),
        warm_up=warm_up,
        close=close,
    )
