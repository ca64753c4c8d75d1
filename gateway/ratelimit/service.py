"""envoy.service.ratelimit.v3.RateLimitService: Envoy asks, per request, whether any limit is hit.

Envoy sends one descriptor per route action (API key id, tenant, client IP), and one
per new connection (client IP, from the network filter). A descriptor whose entries
are (k1, v1), (k2, v2) is limited by the `Limit` named "k1.k2" and counted per
(v1, v2). Each descriptor's status carries the limit, the remaining budget and the
time until its window is clear, from which Envoy writes the x-ratelimit-* headers.
An over-limit answer also carries retry-after, a message for the caller, and
grpc-status-details-bin: the google.rpc.Status a gRPC caller reads RetryInfo from.
"""

import base64
import logging
import math

from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from prometheus_client import Counter, Gauge

from gateway.ratelimit.config import UNIT_SECONDS, Limit, RateLimitSettings
from gateway.ratelimit.counters import Count, Counters, Hit
from services.common.errors import ERROR_DOMAIN, Unavailable

log = logging.getLogger(__name__)

SERVICE_NAME = "envoy.service.ratelimit.v3.RateLimitService"
Response = rls_pb2.RateLimitResponse
_UNITS = {"second": Response.RateLimit.SECOND, "minute": Response.RateLimit.MINUTE,
          "hour": Response.RateLimit.HOUR, "day": Response.RateLimit.DAY}

DECISIONS = Counter("llmsuite_ratelimit_decisions_total",
                    "Descriptor decisions, by descriptor and outcome (ok, over_limit, or unchecked: "
                    "let through without counting because the store failed in open mode).",
                    ["descriptor", "code"])
BACKEND_ERRORS = Counter("llmsuite_ratelimit_backend_errors_total",
                         "Counter-store failures, by the failure mode applied.", ["failure_mode"])
STORE_UP = Gauge("llmsuite_ratelimit_store_up",
                 "1 while the counter store answers, 0 after its last call failed (limits then follow "
                 "failure_mode: open lets requests through unlimited).")


def descriptor_name(descriptor) -> tuple[str, str]:
    """(limit name, counted value) of one descriptor."""
    return (".".join(entry.key for entry in descriptor.entries),
            "|".join(entry.value for entry in descriptor.entries))


def over_limit_status(message: str, name: str, value: str, limit: Limit, allowed: int,
                      retry_after_s: int) -> status_pb2.Status:
    """What a gRPC caller gets in grpc-status-details-bin: RetryInfo and which quota."""
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message)
    delay = duration_pb2.Duration(seconds=retry_after_s)
    status.details.add().Pack(error_details_pb2.ErrorInfo(
        reason="RATE_LIMITED", domain=ERROR_DOMAIN,
        metadata={"descriptor": name, "limit": str(allowed), "unit": limit.unit}))
    status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status.details.add().Pack(error_details_pb2.QuotaFailure(violations=[error_details_pb2.QuotaFailure.Violation(
        subject=f"{name}:{value}", description=f"{allowed} requests per {limit.unit}")]))
    return status


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):
    def __init__(self, settings: RateLimitSettings, counters: Counters):
        self._settings = settings
        self._counters = counters
        self._limits: dict[str, Limit] = {limit.descriptor: limit for limit in settings.limits}
        self._store_up = True
        STORE_UP.set(1)
        # Present at 0 from the start, so the dashboard's store-errors rate reads 0, not no data.
        BACKEND_ERRORS.labels(settings.failure_mode)

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
            hits.append(Hit(self._counter_name(name, value), UNIT_SECONDS[limit.unit], addend or 1,
                            limit.limit_for(value)))
        statuses = [Response.DescriptorStatus(code=Response.OK) for _ in request.descriptors]
        counts = await self._count(hits)
        if counts is None:
            for _, name, _, _ in planned:
                DECISIONS.labels(name, "unchecked").inc()
            response.statuses.extend(statuses)
            return response
        blocked: list[tuple[str, str, Limit, Count]] = []
        for (index, name, value, limit), count in zip(planned, counts):
            allowed = limit.limit_for(value)
            reset = duration_pb2.Duration()
            reset.FromNanoseconds(int(count.reset_in_s * 1e9))
            statuses[index] = Response.DescriptorStatus(
                code=Response.OK if count.allowed else Response.OVER_LIMIT,
                current_limit=Response.RateLimit(name=name, requests_per_unit=allowed, unit=_UNITS[limit.unit]),
                limit_remaining=max(0, allowed - count.used),
                duration_until_reset=reset,
            )
            DECISIONS.labels(name, "ok" if count.allowed else "over_limit").inc()
            if not count.allowed:
                blocked.append((name, value, limit, count))
        response.statuses.extend(statuses)
        if blocked:
            response.overall_code = Response.OVER_LIMIT
            # The caller must wait for the slowest of the limits it is over.
            name, value, limit, count = max(blocked, key=lambda item: item[3].retry_in_s)
            retry_after = max(1, math.ceil(count.retry_in_s))
            allowed = limit.limit_for(value)
            message = (f"rate limit exceeded: {allowed} requests per {limit.unit} "
                       f"for {name} '{value}'; retry in {retry_after} s")
            details = over_limit_status(message, name, value, limit, allowed, retry_after).SerializeToString()
            response.response_headers_to_add.extend([
                base_pb2.HeaderValue(key="retry-after", value=str(retry_after)),
                base_pb2.HeaderValue(key="grpc-status-details-bin",
                                     value=base64.b64encode(details).decode().rstrip("=")),
            ])
            response.raw_body = message.encode()
            log.info("over limit: %s", name, extra={"descriptor": name})
        return response

    async def _count(self, hits: list[Hit]) -> list[Count] | None:
        """Counts hits; None means "let through" after a store failure in open mode."""
        if not hits:
            return []
        try:
            counts = await self._counters.hit(hits)
        except Exception as err:  # any store failure: apply the configured failure mode
            mode = self._settings.failure_mode
            BACKEND_ERRORS.labels(mode).inc()
            if self._store_up:
                log.warning("rate-limit store failed (%s); failing %s until it answers again%s",
                            type(err).__name__, mode, ": requests are not limited" if mode == "open" else "")
            self._set_store_up(False)
            if mode == "open":
                return None
            raise Unavailable("rate limiting is unavailable, so requests are refused; retry shortly",
                              reason="RATELIMIT_STORE_UNAVAILABLE", retry_after_s=1.0) from None
        if not self._store_up:
            log.info("rate-limit store answers again; limits apply")
        self._set_store_up(True)
        return counts

    def _set_store_up(self, up: bool) -> None:
        self._store_up = up
        STORE_UP.set(1 if up else 0)

