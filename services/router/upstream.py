"""Deadlines, retries, circuit breakers and in-flight caps for the router's upstream calls.

Every upstream (guardrails, retrieval, each generation model) has one Upstream:
- a circuit breaker (services/common/resilience.py): after `breaker_failures`
  consecutive failures calls fail fast for `breaker_reset_s`, then one probe may
  pass; its outcome closes or re-opens the circuit;
- a cap on concurrent calls: above `max_in_flight` a call fails fast instead of
  queueing behind a slow upstream and piling up memory;
- retries with exponential backoff and jitter, only after UNAVAILABLE (the
  request never reached a working server, so repeating it is safe) and only while
  the request's deadline leaves time for the wait.
Refusals are Unavailable errors with ErrorInfo (UPSTREAM_CIRCUIT_OPEN,
UPSTREAM_OVERLOADED) and RetryInfo, so the pipeline can degrade on them like on
any other unavailability.
"""

import asyncio
import logging
import time
from contextlib import contextmanager
from typing import Awaitable, Callable, Iterator, TypeVar

import grpc

from services.common.errors import DeadlineExceeded, Unavailable, from_rpc_error
from services.common.resilience import CircuitBreaker, retry_delays
from services.router.config import RouterSettings
from services.router.metrics import BREAKER_STATE, UPSTREAM_REJECTED, UPSTREAM_RETRIES

log = logging.getLogger(__name__)

T = TypeVar("T")

_BREAKER_VALUES = {CircuitBreaker.CLOSED: 0, CircuitBreaker.HALF_OPEN: 1, CircuitBreaker.OPEN: 2}

# Codes that say the upstream is unhealthy. Client errors (INVALID_ARGUMENT,
# NOT_FOUND, ...) prove it is working; CANCELLED says nothing about it.
_FAILURE_CODES = {
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNIMPLEMENTED,
}


class Deadline:
    """The request's deadline, from which every hop's timeout is cut."""

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._at = clock() + timeout_s

    def remaining(self) -> float:
        return self._at - self._clock()

    def timeout(self, cap: float | None = None) -> float:
        """Seconds the next hop may take: what is left, at most `cap`."""
        left = self.remaining()
        if left <= 0:
            raise DeadlineExceeded("the request's deadline passed before the answer was complete")
        return left if cap is None else min(left, cap)


class Upstream:
    """Breaker, in-flight cap and retry policy of one upstream."""

    def __init__(self, name: str, settings: RouterSettings, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s, clock=clock)
        self.in_flight = 0
        self._limit = settings.max_in_flight
        self._retries = settings.retry_attempts
        self._retry_base = settings.retry_base_delay_s
        self._retry_cap = settings.retry_max_delay_s
        self._publish()

    def _publish(self) -> None:
        BREAKER_STATE.labels(self.name).set(_BREAKER_VALUES[self.breaker.state])

    def retry_delays(self) -> Iterator[float]:
        return retry_delays(self._retries, self._retry_base, self._retry_cap)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Admits one call, or raises Unavailable when the breaker is open or the cap reached."""
        # The cap is checked first, so a refused call never uses up a half-open probe.
        if self.in_flight >= self._limit:
            UPSTREAM_REJECTED.labels(self.name, "overloaded").inc()
            raise Unavailable(f"{self.name} has too many calls in flight; retry shortly",
                              reason="UPSTREAM_OVERLOADED", metadata={"upstream": self.name}, retry_after_s=0.5)
        if not self.breaker.allow():
            UPSTREAM_REJECTED.labels(self.name, "breaker_open").inc()
            self._publish()
            raise Unavailable(f"{self.name} is unavailable (circuit open after repeated failures)",
                              reason="UPSTREAM_CIRCUIT_OPEN", metadata={"upstream": self.name},
                              retry_after_s=max(round(self.breaker.retry_after_s(), 3), 0.1))
        self._publish()
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def record_success(self) -> None:
        self.breaker.record_success()
        self._publish()

    def record_error(self, code: grpc.StatusCode, *, hop_timeout_bound: bool) -> None:
        """Counts a failed call; a deadline counts only when this hop's own cap ran out.

        A caller's tight deadline says nothing about the upstream's health; a hop
        that used up its own cap does.
        """
        if code in _FAILURE_CODES or (code == grpc.StatusCode.DEADLINE_EXCEEDED and hop_timeout_bound):
            self.breaker.record_failure()
            if self.breaker.state == CircuitBreaker.OPEN:
                log.warning("circuit to %s is open", self.name, extra={"upstream": self.name})
        elif code != grpc.StatusCode.CANCELLED and code != grpc.StatusCode.DEADLINE_EXCEEDED:
            self.breaker.record_success()
        self._publish()

    async def call(self, fn: Callable[[float], Awaitable[T]], deadline: Deadline, cap: float | None = None) -> T:
        """Runs a unary call `fn(timeout)` with breaker, cap, deadline and retries."""
        delays = self.retry_delays()
        while True:
            timeout = deadline.timeout(cap)
            capped = cap is not None and cap < deadline.remaining()
            with self.slot():
                try:
                    result = await fn(timeout)
                except grpc.aio.AioRpcError as err:
                    self.record_error(err.code(), hop_timeout_bound=capped)
                    delay = next(delays, None) if err.code() == grpc.StatusCode.UNAVAILABLE else None
                    if delay is None or deadline.remaining() <= delay:
                        raise from_rpc_error(err, self.name) from None
                else:
                    self.record_success()
                    return result
            # Outside the slot: a waiting retry does not count as in flight.
            UPSTREAM_RETRIES.labels(self.name).inc()
            await asyncio.sleep(delay)
