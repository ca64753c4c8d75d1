"""Backoff delays and the circuit breaker (services/common/resilience.py)."""

import pytest

from services.common.resilience import CircuitBreaker, retry_delays


def test_retry_delays_grow_exponentially_with_jitter_and_a_cap():
    low = list(retry_delays(6, base_s=0.1, cap_s=1.0, rand=lambda: 0.0))
    high = list(retry_delays(6, base_s=0.1, cap_s=1.0, rand=lambda: 1.0))
    assert high == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert low == pytest.approx([d / 2 for d in high])
    assert list(retry_delays(0)) == []


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_probes_after_timeout():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout_s=2.0, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    assert breaker.retry_after_s() == pytest.approx(2.0)

    clock.now += 2.0
    assert breaker.allow() and breaker.state == "half_open"
    assert not breaker.allow(), "only one probe at a time"
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()

    clock.now += 2.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow() and breaker.retry_after_s() == 0


def test_success_resets_the_failure_count():
    breaker = CircuitBreaker(failure_threshold=2, clock=Clock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == "closed"


def test_probe_that_never_reports_does_not_block_forever():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=1.0, clock=clock)
    breaker.record_failure()
    clock.now += 1.0
    assert breaker.allow()  # the probe's caller goes away without reporting
    clock.now += 1.0
    assert breaker.allow()
