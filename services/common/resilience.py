"""Resilience for calls to an upstream: deadline, retries with backoff and jitter, breaker, in-flight cap.

Every client of another process (the router's guardrails, retrieval and generation
clients, generation's Triton client) sends its calls through one Upstream:
`call` for a unary call, `stream` for a stream. The policy, in one place:
- the request's Deadline bounds every attempt; a hop may be capped shorter;
- UNAVAILABLE (the request never reached a working server, so repeating it is
  safe) is retried with exponential backoff and jitter, only before a stream's
  first item and only while the deadline leaves time for the wait;
- a circuit breaker: after `breaker_failures` consecutive failures calls fail fast
  for `breaker_reset_s`, then one probe may pass; its outcome closes or re-opens it;
- an in-flight cap: above `max_in_flight` a call fails fast instead of queueing
  behind a slow upstream and piling up memory.
Refusals are Unavailable errors with ErrorInfo (UPSTREAM_CIRCUIT_OPEN,
UPSTREAM_OVERLOADED) and RetryInfo, so callers can degrade on them like on any
other unavailability. Metrics stay the owner's: an Observer hears of breaker
states, refusals and retries.

The breaker and the backoff are plain objects with no I/O, so tests drive them
with a fake clock.
"""

import asyncio
import logging
import random
import time
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Iterator, TypeVar

import grpc

from services.common.errors import DeadlineExceeded, ServiceError, Unavailable, from_rpc_error

log = logging.getLogger(__name__)

T = TypeVar("T")

# Codes that say the upstream is unhealthy. Client errors (INVALID_ARGUMENT,
# NOT_FOUND, ...) prove it is working; CANCELLED says nothing about it.
_FAILURE_CODES = {
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNIMPLEMENTED,
}


def retry_delays(attempts: int, base_s: float = 0.05, cap_s: float = 2.0,
                 rand: Callable[[], float] = random.random) -> Iterator[float]:
    """Delays before each of `attempts` retries: exponential backoff with jitter.

    Retry n waits between half and all of min(cap_s, base_s * 2**n); the random half
    keeps many clients that failed together from retrying in lockstep.
    """
    for attempt in range(attempts):
        ceiling = min(cap_s, base_s * 2 ** attempt)
        yield ceiling / 2 + rand() * ceiling / 2


class CircuitBreaker:
    """Fails fast while an upstream is down, instead of every caller waiting on it.

    closed: calls pass; `failure_threshold` consecutive failures open the circuit.
    open: calls are refused for `reset_timeout_s`, then one probe call may pass
    (half-open). The probe's success closes the circuit, its failure re-opens it.
    A probe that never reports (its caller went away) lets another through after
    another `reset_timeout_s`, so the breaker cannot get stuck half-open.
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(self, failure_threshold: int = 5, reset_timeout_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._state = self.CLOSED
        self._failures = 0
        self._next_probe_at = 0.0

    @property
    def state(self) -> str:
        return self._state

    def allow(self) -> bool:
        """Whether a call may go out now; in half-open state, at most one per timeout."""
        if self._state == self.CLOSED:
            return True
        now = self._clock()
        if now < self._next_probe_at:
            return False
        self._state = self.HALF_OPEN
        self._next_probe_at = now + self.reset_timeout_s
        return True

    def retry_after_s(self) -> float:
        """Seconds until a call may be allowed again (0 when closed)."""
        if self._state == self.CLOSED:
            return 0.0
        return max(0.0, self._next_probe_at - self._clock())

    def record_success(self) -> None:
        self._state = self.CLOSED
        self._failures = 0

    def record_failure(self) -> None:
        self._failures += 1
        if self._state == self.HALF_OPEN or self._failures >= self.failure_threshold:
            self._state = self.OPEN
            self._next_probe_at = self._clock() + self.reset_timeout_s


class Deadline:
    """A request's deadline, from which every hop's timeout is cut."""

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._at = clock() + timeout_s

    def remaining(self) -> float:
        return self._at - self._clock()

    def check(self) -> None:
        """Raises DeadlineExceeded once the deadline has passed."""
        if self.remaining() <= 0:
            raise DeadlineExceeded("the request's deadline passed before the answer was complete")

    def timeout(self, cap: float | None = None) -> float:
        """Seconds the next hop may take: what is left, at most `cap`; none left is DeadlineExceeded."""
        self.check()
        left = self.remaining()
        return left if cap is None else min(left, cap)


@dataclass(frozen=True)
class Policy:
    """How one upstream is called: its breaker, its retries and its in-flight cap."""

    breaker_failures: int = 5
    breaker_reset_s: float = 2.0
    retry_attempts: int = 3
    retry_base_delay_s: float = 0.05
    retry_max_delay_s: float = 2.0
    # None: no cap.
    max_in_flight: int | None = None


class Observer:
    """What an Upstream reports, for its owner's metrics; this one ignores it all."""

    def breaker_state(self, state: str) -> None:
        """The breaker is now in `state` (CircuitBreaker.CLOSED, OPEN or HALF_OPEN)."""

    def rejected(self, reason: str) -> None:
        """A call was refused before it went out: "breaker_open" or "overloaded"."""

    def retried(self) -> None:
        """A call is retried after UNAVAILABLE."""


class Incomplete(Exception):
    """Raised by a stream's source when the upstream ended the stream before its final item."""


ErrorMapper = Callable[[grpc.aio.AioRpcError, str], ServiceError]


class Upstream:
    """Breaker, in-flight cap, retries and deadline around the calls to one upstream.

    `errors` turns a failed call into the error our caller sees; by default the
    suite's mapping (services.common.errors.from_rpc_error), which passes a suite
    service's client errors through. `breaker` may be shared by several Upstreams
    that reach one endpoint.
    """

    def __init__(self, name: str, policy: Policy = Policy(), *, observer: Observer | None = None,
                 breaker: CircuitBreaker | None = None, errors: ErrorMapper = from_rpc_error,
                 clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.breaker = breaker or CircuitBreaker(policy.breaker_failures, policy.breaker_reset_s, clock=clock)
        self.in_flight = 0
        self._policy = policy
        self._observer = observer or Observer()
        self._errors = errors
        self._observer.breaker_state(self.breaker.state)

    def retry_after_s(self) -> float:
        """Seconds until the breaker lets a call through again (0 when closed)."""
        return self.breaker.retry_after_s()

    async def call(self, fn: Callable[[float], Awaitable[T]], deadline: Deadline, cap: float | None = None) -> T:
        """Runs a unary call `fn(timeout)`: one attempt per retry, each within `cap` and the deadline."""
        async def once(timeout: float) -> AsyncIterator[T]:
            yield await fn(timeout)
        results = [result async for result in self.stream(once, deadline, cap)]
        return results[0]

    async def stream(self, start: Callable[[float], AsyncIterator[T]], deadline: Deadline,
                     cap: float | None = None, *, retry: bool = True) -> AsyncIterator[T]:
        """Yields the items of `start(timeout)`, a stream that ends after its final item.

        UNAVAILABLE is retried until the first item only: after that, the caller has
        it, and a retry would repeat it. `retry=False` for a stream whose requests
        cannot be sent again. The source raises Incomplete when the upstream ended
        early; a ServiceError it raises means the upstream answered (with an error
        about this request), so it passes through as is.
        """
        delays = self._delays() if retry else iter(())
        while True:
            timeout = deadline.timeout(cap)
            hop_bound = cap is not None and cap < deadline.remaining()
            received = False
            with self._slot():
                try:
                    async with aclosing(start(timeout)) as items:
                        async for item in items:
                            received = True
                            yield item
                    self._succeeded()
                    return
                except grpc.aio.AioRpcError as err:
                    self._failed(err.code(), hop_bound)
                    delay = None if received else self._retry_delay(err.code(), delays, deadline)
                    if delay is None:
                        raise self._errors(err, self.name) from None
                except Incomplete:
                    self._failed(grpc.StatusCode.UNAVAILABLE, hop_bound)
                    raise Unavailable(f"{self.name} ended the stream without a final answer",
                                      reason="UPSTREAM_UNAVAILABLE", metadata={"upstream": self.name},
                                      retry_after_s=1.0) from None
                except ServiceError:
                    self._succeeded()
                    raise
            # Outside the slot: a waiting retry does not count as in flight.
            log.info("%s unavailable; retrying in %.3fs", self.name, delay)
            self._observer.retried()
            await asyncio.sleep(delay)

    def _delays(self) -> Iterator[float]:
        policy = self._policy
        return retry_delays(policy.retry_attempts, policy.retry_base_delay_s, policy.retry_max_delay_s)

    @staticmethod
    def _retry_delay(code: grpc.StatusCode, delays: Iterator[float], deadline: Deadline) -> float | None:
        """The wait before the next attempt, or None when this failure is final."""
        if code != grpc.StatusCode.UNAVAILABLE:
            return None
        delay = next(delays, None)
        if delay is None or deadline.remaining() <= delay:
            return None
        return delay

    @contextmanager
    def _slot(self) -> Iterator[None]:
        """Admits one call, or raises Unavailable when the cap is reached or the breaker is open."""
        # The cap is checked first, so a refused call never uses up a half-open probe.
        limit = self._policy.max_in_flight
        if limit is not None and self.in_flight >= limit:
            self._observer.rejected("overloaded")
            raise Unavailable(f"{self.name} has too many calls in flight; retry shortly",
                              reason="UPSTREAM_OVERLOADED", metadata={"upstream": self.name}, retry_after_s=0.5)
        allowed = self.breaker.allow()
        self._observer.breaker_state(self.breaker.state)
        if not allowed:
            self._observer.rejected("breaker_open")
            raise Unavailable(f"{self.name} is unavailable (circuit open after repeated failures)",
                              reason="UPSTREAM_CIRCUIT_OPEN", metadata={"upstream": self.name},
                              retry_after_s=max(round(self.breaker.retry_after_s(), 3), 0.1))
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def _succeeded(self) -> None:
        self.breaker.record_success()
        self._observer.breaker_state(self.breaker.state)

    def _failed(self, code: grpc.StatusCode, hop_bound: bool) -> None:
        """Counts a failed call; a deadline counts only when this hop's own cap ran out.

        A caller's tight deadline says nothing about the upstream's health; a hop
        that used up its own cap does.
        """
        if code in _FAILURE_CODES or (code == grpc.StatusCode.DEADLINE_EXCEEDED and hop_bound):
            self.breaker.record_failure()
            if self.breaker.state == CircuitBreaker.OPEN:
                log.warning("circuit to %s is open", self.name, extra={"upstream": self.name})
        elif code not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
            self.breaker.record_success()
        self._observer.breaker_state(self.breaker.state)
