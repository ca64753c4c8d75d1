"""The router's upstreams: the shared resilience policy (services/common/resilience.py)
configured from RouterSettings, reporting to the router's metrics.

Every upstream (guardrails, retrieval, each generation model) has its own Upstream,
so a failing full model opens only its own circuit and the light model keeps answering;
within each, a tenant holds at most `max_in_flight_per_tenant` of its slots, and the
tenant's own calls that run out of their hop's time open only that tenant's breaker.
"""

import time
from typing import Callable

from services.common.resilience import CircuitBreaker, Observer, Policy, Upstream
from services.router.config import RouterSettings
from services.router.metrics import BREAKER_STATE, UPSTREAM_REJECTED, UPSTREAM_RETRIES

_BREAKER_VALUES = {CircuitBreaker.CLOSED: 0, CircuitBreaker.HALF_OPEN: 1, CircuitBreaker.OPEN: 2}


class _Metrics(Observer):
    def __init__(self, name: str):
        self._name = name

    def breaker_state(self, state: str) -> None:
        BREAKER_STATE.labels(self._name).set(_BREAKER_VALUES[state])

    def rejected(self, reason: str) -> None:
        UPSTREAM_REJECTED.labels(self._name, reason).inc()

    def retried(self) -> None:
        UPSTREAM_RETRIES.labels(self._name).inc()


def upstream_for(name: str, settings: RouterSettings, clock: Callable[[], float] = time.monotonic) -> Upstream:
    """The Upstream of one of the router's upstreams, named as its metrics label it."""
    policy = Policy(breaker_failures=settings.breaker_failures, breaker_reset_s=settings.breaker_reset_s,
                    retry_attempts=settings.retry_attempts, retry_base_delay_s=settings.retry_base_delay_s,
                    retry_max_delay_s=settings.retry_max_delay_s, max_in_flight=settings.max_in_flight,
                    max_in_flight_per_tenant=settings.max_in_flight_per_tenant)
    return Upstream(name, policy, observer=_Metrics(name), clock=clock)
