"""Retry backoff and a circuit breaker for calls to an upstream (Triton, other services).

Both are plain objects with no I/O, so callers decide what counts as a failure and
tests drive them with a fake clock.
"""

import random
import time
from typing import Callable, Iterator


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
