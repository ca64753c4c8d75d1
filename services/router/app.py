"""Wires the router's pipeline, clients and stores into a Service."""

import logging

import asyncio
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
from services.router.cache import ResponseCache
from services.router.config import RouterSettings
from services.router.generation_client import GenerationClient
from services.router.guardrails_client import GuardrailsClient
from services.router.pipeline import Pipeline
from services.router.prompt import SecretSource
from services.router.retrieval_client import RetrievalClient
from services.router.rollout import Rollouts
from services.router.servicer import InferenceServicer
from services.router.sessions import SessionStore
from services.router.shared_state import MemoryState, RedisState, StateSync
from services.router.stores import MemoryStore, RedisStore
from services.router.templates import Templates

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


def _audit_log(settings: RouterSettings) -> AuditLog | None:
    if not settings.audit_dir:
        log.warning("audit_dir is empty: requests and admin actions are NOT audited (development only)")
        return None
    audit_log = AuditLog(Path(settings.audit_dir), max_file_bytes=settings.audit_max_file_bytes,
                         queue_size=settings.audit_queue_size)
    try:
        audit_log.open()
    except AuditError as err:
        raise ConfigError(f"router.audit_dir: {err}") from None
    return audit_log


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
        shared_state = RedisState(settings.redis_url, settings.redis_timeout_s)
    else:
        answers = MemoryStore(settings.cache_max_entries)
        vectors = MemoryStore(_MEMORY_SEMANTIC_SCOPES)
        session_store = MemoryStore(settings.max_sessions)
        stores = [answers, vectors, session_store]
        shared_state = MemoryState()
    audit_log = _audit_log(settings)
    auditing = Auditing(audit_log, Fingerprints(settings.audit_hmac_key))
    rollouts = Rollouts(settings, shared_state, auditing, generation.models, on_variants=generation.add_models)
    prompt_templates = Templates(settings, shared_state)
    sync = StateSync(shared_state, settings.state_poll_interval_s,
                     {rollout.KIND: rollouts.apply, templates.KIND: prompt_templates.apply})
    pipeline = Pipeline(
        settings, generation, guardrails, retrieval,
        ResponseCache(answers, vectors, settings.semantic_max_entries),
        SessionStore(session_store, settings.session_max_turns, settings.session_ttl_s),
        SecretSource(settings.canary_key),
        rollouts=rollouts, templates=prompt_templates, auditing=auditing,
    )
    servicer = InferenceServicer(pipeline)
    admin = AdminServicer(rollouts, prompt_templates, auditing)

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
        if settings.redis_url and not await stores[0].ping():
            log.warning("redis is not reachable; cache and sessions are skipped until it is")

    async def close() -> None:
        await sync.stop()
        for client in (generation, guardrails, retrieval):
            if client is not None:
                await client.close()
        for store in stores:
            await store.close()
        await shared_state.close()
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
