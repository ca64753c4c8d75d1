"""Wires the router's pipeline, clients and stores into a Service."""

import asyncio
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from llmsuite.admin.v1 import admin_pb2, admin_pb2_grpc
from llmsuite.generation.v1 import generation_pb2
from llmsuite.guardrails.v1 import guardrails_pb2
from llmsuite.inference.v1 import inference_pb2, inference_pb2_grpc
from llmsuite.retrieval.v1 import retrieval_pb2

from services.audit.fingerprint import Fingerprints
from services.audit.log import AuditError, AuditLog
from services.common.config import ConfigError
from services.common.server import Service
from services.router import rollout, templates
from services.router.admin import AdminServicer
from services.router.auditing import Auditing
from services.router.batches import Batches
from services.router.cache import ResponseCache
from services.router.config import RouterSettings
from services.router.counters import Counters, MemoryCounters, RedisCounters
from services.router.feedback import Feedback, RequestLog
from services.router.generation_client import GenerationClient
from services.router.guardrails_client import GuardrailsClient
from services.router.job_runner import JobRunner, PipelineExecutor, RunnerPolicy
from services.router.jobs import Jobs, MemoryJobs, RedisJobs
from services.router.metrics import BUDGET_USD
from services.router.pipeline import Pipeline
from services.router.prompt import SecretSource
from services.router.retrieval_client import RetrievalClient
from services.router.rollout import Rollouts
from services.router.servicer import InferenceServicer, Operations
from services.router.session_api import SessionApi
from services.router.sessions import SessionStore
from services.router.shared_state import MemoryState, RedisState, SharedState, StateSync
from services.router.stores import MemoryStore, RedisStore, Store
from services.router.templates import Templates
from services.router.usage import Usage

log = logging.getLogger(__name__)

# Envoy sends all reflection calls to the router, so that grpcurl can list and
# describe every service of the suite at the edge; the router holds their
# descriptors (it is a client of them all) and reports them here.
EDGE_SERVICES = [
    inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
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
    # Rollouts and template versions (shared_state.py).
    state: SharedState
    redis: RedisStore | None = None

    @classmethod
    def of(cls, settings: RouterSettings) -> "_Stores":
        if settings.redis_url:
            redis = RedisStore(settings.redis_url, settings.redis_timeout_s, settings.redis_max_connections)
            return cls(redis, redis, redis, redis, RedisCounters(redis.client), RedisJobs(redis.client),
                       RedisState(settings.redis_url, settings.redis_timeout_s), redis)
        return cls(MemoryStore(settings.cache_max_entries), MemoryStore(_MEMORY_SEMANTIC_SCOPES),
                   MemoryStore(settings.max_sessions), MemoryStore(_MEMORY_REQUEST_RECORDS), MemoryCounters(),
                   MemoryJobs(), MemoryState())

    async def close(self) -> None:
        for store in dict.fromkeys((self.answers, self.vectors, self.sessions, self.records)):
            await store.close()
        await self.state.close()


def open_audit_log(settings: RouterSettings) -> AuditLog | None:
    """The replica's audit log, taken and started; None without `audit_dir`."""
    if not settings.audit_dir:
        log.warning("audit_dir is empty: requests and admin actions are NOT audited (development only)")
        return None
    # Replicas that share a volume (compose --scale) each need their own chain.
    directory = Path(settings.audit_dir.replace("{hostname}", socket.gethostname()))
    audit_log = AuditLog(directory, max_file_bytes=settings.audit_max_file_bytes,
                         queue_size=settings.audit_queue_size)
    try:
        audit_log.open()
    except AuditError as err:
        raise ConfigError(f"router.audit_dir: {err}") from None
    return audit_log


def _job_runner(settings: RouterSettings, stores: _Stores, pipeline: Pipeline) -> JobRunner | None:
    """Without Redis, jobs wait in this process's queue, and this router is their worker."""
    if stores.redis is not None or not settings.job_workers:
        return None
    return JobRunner(stores.jobs, PipelineExecutor(pipeline), "router", RunnerPolicy(concurrency=settings.job_workers))


def export_budgets(settings: RouterSettings) -> None:
    """The tenants' spend limits as gauges, for the alert on spend per hour (compose/prometheus)."""
    for tenant, policy in settings.tenants.items():
        for period, limit in (("day", policy.budget.usd_per_day), ("month", policy.budget.usd_per_month)):
            if limit:
                BUDGET_USD.labels(tenant, period).set(limit)


def build_service(settings: RouterSettings) -> Service:
    export_budgets(settings)
    generation = GenerationClient(settings)
    guardrails = GuardrailsClient(settings) if settings.guardrails_url else None
    retrieval = RetrievalClient(settings) if settings.retrieval_url else None
    if guardrails is None:
        log.warning("guardrails_url is empty: requests are NOT checked by guardrails (development only)")
    stores = _Stores.of(settings)
    cache = ResponseCache(stores.answers, stores.vectors, settings.semantic_max_entries)
    sessions = SessionStore(stores.sessions, settings.session_max_turns, settings.session_ttl_s)
    requests = RequestLog(stores.records, settings.feedback_window_s)
    audit_log = open_audit_log(settings)
    auditing = Auditing(audit_log, Fingerprints(settings.audit_hmac_key))
    rollouts = Rollouts(settings, stores.state, auditing, generation.models, on_variants=generation.add_models)
    prompt_templates = Templates(settings, stores.state)
    sync = StateSync(stores.state, settings.state_poll_interval_s,
                     {rollout.KIND: rollouts.apply, templates.KIND: prompt_templates.apply})
    pipeline = Pipeline(settings, generation, guardrails, retrieval, cache, sessions,
                        SecretSource(settings.canary_key), rollouts=rollouts, templates=prompt_templates,
                        auditing=auditing, counters=stores.counters, requests=requests)
    servicer = InferenceServicer(pipeline, Operations(
        usage=Usage(settings, stores.counters), batches=Batches(settings, stores.jobs),
        sessions=SessionApi(settings, sessions, cache), feedback=Feedback(requests, stores.records)))
    admin = AdminServicer(rollouts, prompt_templates, auditing)
    runner = _job_runner(settings, stores, pipeline)
    background: list[asyncio.Task] = []

    def register(server) -> None:
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)

    async def warm_up() -> None:
        # Rollouts and template versions as the other replicas serve them, before
        # the first request; then kept current.
        await sync.refresh()
        sync.start()
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
        await sync.stop()
        for client in (generation, guardrails, retrieval):
            if client is not None:
                await client.close()
        await stores.close()
        if audit_log is not None:
            # After the server stopped: every answered request's record is queued.
            await asyncio.to_thread(audit_log.close)

    return Service(
        name="router",
        settings=settings,
        service_names=EDGE_SERVICES[:2],
        reflection_names=EDGE_SERVICES[2:],
        register=register,
        warm_up=warm_up,
        close=close,
    )
