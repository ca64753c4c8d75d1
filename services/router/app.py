"""Wires the router's pipeline, clients and stores into a Service."""

import asyncio
import logging
from dataclasses import dataclass

from llmsuite.generation.v1 import generation_pb2
from llmsuite.guardrails.v1 import guardrails_pb2
from llmsuite.inference.v1 import inference_pb2, inference_pb2_grpc
from llmsuite.retrieval.v1 import retrieval_pb2

from services.common.server import Service
from services.router.batches import Batches
from services.router.cache import ResponseCache
from services.router.config import RouterSettings
from services.router.counters import Counters, MemoryCounters, RedisCounters
from services.router.feedback import Feedback, RequestLog
from services.router.generation_client import GenerationClient
from services.router.guardrails_client import GuardrailsClient
from services.router.job_runner import JobRunner, PipelineExecutor, RunnerPolicy
from services.router.jobs import Jobs, MemoryJobs, RedisJobs
from services.router.pipeline import Pipeline
from services.router.prompt import SecretSource
from services.router.retrieval_client import RetrievalClient
from services.router.servicer import InferenceServicer, Operations
from services.router.session_api import SessionApi
from services.router.sessions import SessionStore
from services.router.stores import MemoryStore, RedisStore, Store
from services.router.usage import Usage

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
# Request records (for feedback) the in-process store keeps, about 200 bytes each.
_MEMORY_REQUEST_RECORDS = 100_000


@dataclass
class _Stores:
    """Where the router keeps state: one Redis for every replica, or this process."""

    answers: Store
    vectors: Store
    sessions: Store
    records: Store
    counters: Counters
    jobs: Jobs
    redis: RedisStore | None = None

    @classmethod
    def of(cls, settings: RouterSettings) -> "_Stores":
        if settings.redis_url:
            redis = RedisStore(settings.redis_url, settings.redis_timeout_s)
            return cls(redis, redis, redis, redis, RedisCounters(redis.client), RedisJobs(redis.client), redis)
        return cls(MemoryStore(settings.cache_max_entries), MemoryStore(_MEMORY_SEMANTIC_SCOPES),
                   MemoryStore(settings.max_sessions), MemoryStore(_MEMORY_REQUEST_RECORDS), MemoryCounters(),
                   MemoryJobs())

    async def close(self) -> None:
        for store in dict.fromkeys((self.answers, self.vectors, self.sessions, self.records)):
            await store.close()


def build_service(settings: RouterSettings) -> Service:
    generation = GenerationClient(settings)
    guardrails = GuardrailsClient(settings) if settings.guardrails_url else None
    retrieval = RetrievalClient(settings) if settings.retrieval_url else None
    if guardrails is None:
        log.warning("guardrails_url is empty: requests are NOT checked by guardrails (development only)")
    stores = _Stores.of(settings)
    cache = ResponseCache(stores.answers, stores.vectors, settings.semantic_max_entries)
    sessions = SessionStore(stores.sessions, settings.session_max_turns, settings.session_ttl_s)
    requests = RequestLog(stores.records, settings.feedback_window_s)
    pipeline = Pipeline(settings, generation, guardrails, retrieval, cache, sessions,
                        SecretSource(settings.canary_key), stores.counters, requests)
    servicer = InferenceServicer(pipeline, Operations(
        usage=Usage(settings, stores.counters), batches=Batches(settings, stores.jobs),
        sessions=SessionApi(settings, sessions, cache), feedback=Feedback(requests, stores.records)))
    # Without Redis, jobs wait in this process's queue, and this router is their worker.
    runner = None
    if stores.redis is None and settings.job_workers:
        runner = JobRunner(stores.jobs, PipelineExecutor(pipeline), "router",
                           RunnerPolicy(concurrency=settings.job_workers))
    background: list[asyncio.Task] = []

    async def warm_up() -> None:
        # Only generation gates readiness: without guardrails or retrieval the
        # router still answers (fails closed or degrades, per tenant policy).
        await generation.wait_ready()
        if stores.redis is not None and not await stores.redis.ping():
            log.warning("redis is not reachable; cache and sessions are skipped until it is")
        if runner is not None:
            background.append(asyncio.create_task(runner.run()))

    async def close() -> None:
        if runner is not None:
            await runner.stop(settings.grace_seconds)
        for task in background:
            task.cancel()
        for client in (generation, guardrails, retrieval):
            if client is not None:
                await client.close()
        await stores.close()

    return Service(
        name="router",
        settings=settings,
        service_names=[EDGE_SERVICES[0]],
        reflection_names=EDGE_SERVICES[1:],
        register=lambda server: inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server),
        warm_up=warm_up,
        close=close,
    )
