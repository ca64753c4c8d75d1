"""Resilience for calls to an upstream: deadline, retries with backoff and jitter, breaker, in-flight cap.

Every client of another process (the router's guardrails, retrieval and generation
clients, generation's Triton client) sends its calls through one Upstream:
`call` for a unary call, `stream` for a stream. The policy, in one place:
- the request's Deadline bounds every attempt; a hop may be capped shorter;
- UNAVAILABLE (the request never reached a working server, so repeating it is
  safe) is retried with exponential backoff and jitter, only before a stream's
  first item and only while the deadline leaves time for the wait;
- a circuit breaker: after `breaker_failures` consecutive upstream faults calls
  fail fast for `breaker_reset_s`, then one probe may pass; its outcome closes or
  re-opens it;
- an in-flight cap: above `max_in_flight` a call fails fast instead of queueing
  behind a slow upstream and piling up memory;
- tenant isolation (the tenant is the request's, services.common.context): one
  tenant holds at most `max_in_flight_per_tenant` of the upstream's slots, and a
  call that runs out its hop's time cap counts against the calling tenant's own
  breaker, never the shared one. A hop timeout says that this call was slow; when
  the upstream is down, calls fail with UNAVAILABLE, which the shared breaker
  counts. A slow call is as often the input's doing (a pathological prompt) as the
  upstream's, and a shared breaker opened by one tenant's slow inputs would refuse
  every tenant (issue 14). A hung upstream still trips every tenant's breaker
  after that tenant's own `breaker_failures` timeouts.
Refusals are Unavailable errors with ErrorInfo (UPSTREAM_CIRCUIT_OPEN,
UPSTREAM_OVERLOADED, UPSTREAM_TENANT_LIMIT) and RetryInfo, so callers can degrade
on them like on any other unavailability. Metrics stay the owner's: an Observer
hears of breaker states, refusals and retries.

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

from services.common.context import tenant_var
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

    @property
    def idle(self) -> bool:
        """Closed with no failure counted: nothing worth remembering."""
        return self._state == self.CLOSED and self._failures == 0

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
    # Most of those slots one tenant may hold at once; None: no per-tenant cap.
    max_in_flight_per_tenant: int | None = None


class Observer:
    """What an Upstream reports, for its owner's metrics; this one ignores it all."""

    def breaker_state(self, state: str) -> None:
        """The breaker is now in `state` (CircuitBreaker.CLOSED, OPEN or HALF_OPEN)."""

    def rejected(self, reason: str) -> None:
        """A call was refused before it went out: "breaker_open", "overloaded", or for the
        calling tenant only, "tenant_limit" or "tenant_breaker_open"."""

    def retried(self) -> None:
        """A call is retried after UNAVAILABLE."""


class Incomplete(Exception):
    """Raised by a stream's source when the upstream ended the stream before its final item."""


ErrorMapper = Callable[[grpc.aio.AioRpcError, str], ServiceError]


class _Share:
    """One tenant's part of an Upstream: its calls in flight and its own breaker."""

    def __init__(self, breaker: CircuitBreaker):
        self.in_flight = 0
        self.breaker = breaker


class Upstream:
    """Breaker, in-flight caps, retries and deadline around the calls to one upstream.

    `errors` turns a failed call into the error our caller sees; by default the
    suite's mapping (services.common.errors.from_rpc_error), which passes a suite
    service's client errors through. `breaker` may be shared by several Upstreams
    that reach one endpoint. `tenant` names the tenant of the call being made (by
    default the request context's).
    """

    def __init__(self, name: str, policy: Policy = Policy(), *, observer: Observer | None = None,
                 breaker: CircuitBreaker | None = None, errors: ErrorMapper = from_rpc_error,
                 tenant: Callable[[], str] = tenant_var.get, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.breaker = breaker or CircuitBreaker(policy.breaker_failures, policy.breaker_reset_s, clock=clock)
        self.in_flight = 0
        self._policy = policy
        self._observer = observer or Observer()
        self._errors = errors
        self._tenant = tenant
        self._clock = clock
        # Only tenants with calls in flight or a non-idle breaker, so this stays as
        # small as the set of tenants active right now.
        self._shares: dict[str, _Share] = {}
        self._observer.breaker_state(self.breaker.state)

    def retry_after_s(self) -> float:
        """Seconds until the breaker lets a call through again (0 when closed)."""
        return self.breaker.retry_after_s()

    def tracked_tenants(self) -> list[str]:
        """The tenants this Upstream keeps state for: calls in flight, or a breaker not idle."""
        return sorted(self._shares)

    def tenant_in_flight(self, tenant: str) -> int:
        """Calls of `tenant` in flight now."""
        share = self._shares.get(tenant)
        return share.in_flight if share else 0

    def tenant_breaker_state(self, tenant: str) -> str:
        """The state of `tenant`'s own breaker (hop timeouts of its calls)."""
        share = self._shares.get(tenant)
        return share.breaker.state if share else CircuitBreaker.CLOSED

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
            with self._slot() as share:
                try:
                    async with aclosing(start(timeout)) as items:
                        async for item in items:
                            received = True
                            yield item
                    self._succeeded(share)
                    return
                except grpc.aio.AioRpcError as err:
                    self._failed(share, err.code(), hop_bound)
                    delay = None if received else self._retry_delay(err.code(), delays, deadline)
                    if delay is None:
                        raise self._errors(err, self.name) from None
                except Incomplete:
                    self._failed(share, grpc.StatusCode.UNAVAILABLE, hop_bound)
                    raise Unavailable(f"{self.name} ended the stream without a final answer",
                                      reason="UPSTREAM_UNAVAILABLE", metadata={"upstream": self.name},
                                      retry_after_s=1.0) from None
                except ServiceError:
                    self._succeeded(share)
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
    def _slot(self) -> Iterator[_Share]:
        """Admits one call of the current tenant, or raises Unavailable: a cap reached, a breaker open."""
        tenant = self._tenant()
        share = self._shares.get(tenant)
        if share is None:
            share = self._shares[tenant] = _Share(CircuitBreaker(
                self._policy.breaker_failures, self._policy.breaker_reset_s, clock=self._clock))
        try:
            self._admit(share)
        except Unavailable:
            self._forget_idle(tenant, share)
            raise
        self.in_flight += 1
        share.in_flight += 1
        try:
            yield share
        finally:
            self.in_flight -= 1
            share.in_flight -= 1
            self._forget_idle(tenant, share)

    def _admit(self, share: _Share) -> None:
        # Caps before breakers and the tenant's breaker before the shared one, so a
        # refused call never uses up a half-open probe it would not have made.
        limit, per_tenant = self._policy.max_in_flight, self._policy.max_in_flight_per_tenant
        if limit is not None and self.in_flight >= limit:
            self._refuse("overloaded", f"{self.name} has too many calls in flight; retry shortly",
                         "UPSTREAM_OVERLOADED", 0.5)
        if per_tenant is not None and share.in_flight >= per_tenant:
            self._refuse("tenant_limit", f"this tenant has too many calls in flight to {self.name}; retry shortly",
                         "UPSTREAM_TENANT_LIMIT", 0.5)
        if not share.breaker.allow():
            self._refuse("tenant_breaker_open", f"{self.name} keeps running out of time on this tenant's "
                         "requests; retry later", "UPSTREAM_CIRCUIT_OPEN", share.breaker.retry_after_s(),
                         scope="tenant")
        allowed = self.breaker.allow()
        self._observer.breaker_state(self.breaker.state)
        if not allowed:
            self._refuse("breaker_open", f"{self.name} is unavailable (circuit open after repeated failures)",
                         "UPSTREAM_CIRCUIT_OPEN", self.breaker.retry_after_s())

    def _refuse(self, why: str, message: str, reason: str, retry_after_s: float, scope: str = "") -> None:
        self._observer.rejected(why)
        metadata = {"upstream": self.name, **({"scope": scope} if scope else {})}
        raise Unavailable(message, reason=reason, metadata=metadata,
                          retry_after_s=max(round(retry_after_s, 3), 0.1))

    def _forget_idle(self, tenant: str, share: _Share) -> None:
        if share.in_flight == 0 and share.breaker.idle and self._shares.get(tenant) is share:
            del self._shares[tenant]

    def _succeeded(self, share: _Share) -> None:
        share.breaker.record_success()
        self.breaker.record_success()
        self._observer.breaker_state(self.breaker.state)

    def _failed(self, share: _Share, code: grpc.StatusCode, hop_bound: bool) -> None:
        """Counts a failed call: a fault of the upstream against the shared breaker, a
        hop that ran out its own time cap against the tenant's.

        A caller's tight deadline says nothing about anyone; a cancelled call neither.
        """
        if code in _FAILURE_CODES:
            self.breaker.record_failure()
            if self.breaker.state == CircuitBreaker.OPEN:
                log.warning("circuit to %s is open", self.name, extra={"upstream": self.name})
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            if hop_bound:
                share.breaker.record_failure()
                if share.breaker.state == CircuitBreaker.OPEN:
                    log.warning("circuit to %s is open for one tenant (its calls run out of time)", self.name,
                                extra={"upstream": self.name})
        elif code != grpc.StatusCode.CANCELLED:
            self._succeeded(share)
        self._observer.breaker_state(self.breaker.state)
