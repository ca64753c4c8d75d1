"""envoy.service.ratelimit.v3.RateLimitService: Envoy asks, per request, whether any limit is hit.

Envoy sends one descriptor per route action (API key id, tenant, client IP). A
descriptor whose entries are (k1, v1), (k2, v2) is limited by the `Limit` named
"k1.k2" and counted per (v1, v2). Each descriptor's status carries the limit, the
remaining budget and the time to reset, from which Envoy writes the x-ratelimit-*
headers; an over-limit answer also carries retry-after and a message for the caller.
"""

import logging
import math

from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import duration_pb2
from prometheus_client import Counter

from gateway.ratelimit.config import UNIT_SECONDS, Limit, RateLimitSettings
from gateway.ratelimit.counters import Count, Counters, Hit
from services.common.errors import Unavailable

log = logging.getLogger(__name__)

SERVICE_NAME = "envoy.service.ratelimit.v3.RateLimitService"
Response = rls_pb2.RateLimitResponse
_UNITS = {"second": Response.RateLimit.SECOND, "minute": Response.RateLimit.MINUTE,
          "hour": Response.RateLimit.HOUR, "day": Response.RateLimit.DAY}

DECISIONS = Counter("llmsuite_ratelimit_decisions_total", "Descriptor decisions, by descriptor and outcome.",
                    ["descriptor", "code"])
BACKEND_ERRORS = Counter("llmsuite_ratelimit_backend_errors_total",
                         "Counter-store failures, by the failure mode applied.", ["failure_mode"])


def descriptor_name(descriptor) -> tuple[str, str]:
    """(limit name, counted value) of one descriptor."""
    return (".".join(entry.key for entry in descriptor.entries),
            "|".join(entry.value for entry in descriptor.entries))


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):
    def __init__(self, settings: RateLimitSettings, counters: Counters):
        self._settings = settings
        self._counters = counters
        self._limits: dict[str, Limit] = {limit.descriptor: limit for limit in settings.limits}

    def _counter_name(self, name: str, value: str) -> str:
        # The braces are a Redis cluster hash tag: every window of one counter
        # maps to the same slot.
        return f"{self._settings.key_prefix}:{{{self._settings.domain}|{name}={value}}}"

    async def ShouldRateLimit(self, request: rls_pb2.RateLimitRequest, context) -> rls_pb2.RateLimitResponse:
        response = Response(overall_code=Response.OK)
        if request.domain != self._settings.domain:
            response.statuses.extend(Response.DescriptorStatus(code=Response.OK) for _ in request.descriptors)
            return response
        planned: list[tuple[int, str, str, Limit]] = []
        hits: list[Hit] = []
        for index, descriptor in enumerate(request.descriptors):
            name, value = descriptor_name(descriptor)
            limit = self._limits.get(name)
            if limit is None:
                continue
            addend = descriptor.hits_addend.value if descriptor.HasField("hits_addend") else request.hits_addend
            planned.append((index, name, value, limit))
            hits.append(Hit(self._counter_name(name, value), UNIT_SECONDS[limit.unit], addend or 1))
        statuses = [Response.DescriptorStatus(code=Response.OK) for _ in request.descriptors]
        counts = await self._count(hits)
        if counts is None:
            response.statuses.extend(statuses)
            return response
        blocked: list[tuple[str, str, Limit, Count]] = []
        for (index, name, value, limit), count in zip(planned, counts):
            allowed = limit.limit_for(value)
            over = count.value > allowed
            reset = duration_pb2.Duration()
            reset.FromNanoseconds(int(count.reset_in_s * 1e9))
            statuses[index] = Response.DescriptorStatus(
                code=Response.OVER_LIMIT if over else Response.OK,
                current_limit=Response.RateLimit(name=name, requests_per_unit=allowed, unit=_UNITS[limit.unit]),
                limit_remaining=max(0, allowed - count.value),
                duration_until_reset=reset,
            )
            DECISIONS.labels(name, "over_limit" if over else "ok").inc()
            if over:
                blocked.append((name, value, limit, count))
        response.statuses.extend(statuses)
        if blocked:
            response.overall_code = Response.OVER_LIMIT
            name, value, limit, count = max(blocked, key=lambda item: item[3].reset_in_s)
            retry_after = max(1, math.ceil(count.reset_in_s))
            response.response_headers_to_add.append(base_pb2.HeaderValue(key="retry-after", value=str(retry_after)))
            response.raw_body = (f"rate limit exceeded: {limit.limit_for(value)} requests per {limit.unit} "
                                 f"for {name} '{value}'; retry in {retry_after} s").encode()
            log.info("over limit: %s", name, extra={"descriptor": name})
        return response

    async def _count(self, hits: list[Hit]) -> list[Count] | None:
        """Counts hits; None means "let through" after a store failure in open mode."""
        if not hits:
            return []
        try:
            return await self._counters.hit(hits)
        except Exception as err:  # any store failure: apply the configured failure mode
            mode = self._settings.failure_mode
            BACKEND_ERRORS.labels(mode).inc()
            log.warning("rate-limit store failed (%s); failing %s", type(err).__name__, mode)
            if mode == "open":
                return None
            raise Unavailable("rate limiting is unavailable, so requests are refused; retry shortly",
                              reason="RATELIMIT_STORE_UNAVAILABLE", retry_after_s=1.0) from None
