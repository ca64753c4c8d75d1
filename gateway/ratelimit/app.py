"""Wires the ratelimit service for the shared bootstrap."""

import logging

from envoy.service.ratelimit.v3 import rls_pb2_grpc

from gateway.ratelimit.config import RateLimitSettings
from gateway.ratelimit.counters import Counters, MemoryCounters, RedisCounters
from gateway.ratelimit.service import SERVICE_NAME, RateLimitServicer
from services.common.server import Service

log = logging.getLogger(__name__)


def build_service(settings: RateLimitSettings) -> Service:
    counters: Counters
    if settings.redis_url:
        counters = RedisCounters(settings.redis_url, settings.redis_timeout_s)
    else:
        counters = MemoryCounters()
        log.info("counters in process: limits hold per replica only; set redis_url for more than one")

    async def warm_up() -> None:
        # A Redis that is down at start is a store failure like any other; say so early.
        if isinstance(counters, RedisCounters):
            try:
                await counters.ping()
            except Exception as err:  # reported, then handled per request by failure_mode
                log.warning("Redis not reachable at start (%s); failure_mode=%s applies",
                            type(err).__name__, settings.failure_mode)

    return Service(
        name="ratelimit",
        settings=settings,
        service_names=[SERVICE_NAME],
        register=lambda server: rls_pb2_grpc.add_RateLimitServiceServicer_to_server(
            RateLimitServicer(settings, counters), server),
        warm_up=warm_up,
        close=counters.close,
    )
