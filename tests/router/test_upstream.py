"""Breaker, in-flight cap, retries and deadlines around upstream calls (fake upstream, fake clock)."""

import asyncio

import grpc
import pytest

from services.common.errors import DeadlineExceeded, InvalidArgument, Unavailable
from services.router.config import RouterSettings
from services.common.resilience import Deadline
from services.router.upstream import upstream_for

SETTINGS = RouterSettings(breaker_failures=2, breaker_reset_s=5.0, retry_attempts=2, retry_base_delay_s=0.001,
                          retry_max_delay_s=0.002, max_in_flight=1)


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="upstream says no")


class FakeCall:
    """An upstream whose answers are scripted: exceptions are raised, values returned."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.timeouts: list[float] = []

    async def __call__(self, timeout: float):
        self.timeouts.append(timeout)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


async def test_unavailable_is_retried_then_succeeds():
    upstream = upstream_for("svc", SETTINGS)
    call = FakeCall(rpc_error(grpc.StatusCode.UNAVAILABLE), "ok")
    assert await upstream.call(call, Deadline(10), cap=2.0) == "ok"
    assert len(call.timeouts) == 2 and all(t <= 2.0 for t in call.timeouts)
    assert upstream.breaker.state == "closed"


async def test_other_errors_are_not_retried_and_keep_their_meaning():
    upstream = upstream_for("svc", SETTINGS)
    call = FakeCall(rpc_error(grpc.StatusCode.INVALID_ARGUMENT))
    with pytest.raises(InvalidArgument):
        await upstream.call(call, Deadline(10))
    assert len(call.timeouts) == 1
    assert upstream.breaker.state == "closed"  # a client error proves the upstream works


async def test_breaker_opens_fails_fast_and_recovers_after_a_probe():
    now = [100.0]
    upstream = upstream_for("svc", SETTINGS, clock=lambda: now[0])
    down = FakeCall(*[rpc_error(grpc.StatusCode.UNAVAILABLE)] * 3)
    with pytest.raises(Unavailable):
        await upstream.call(down, Deadline(10))
    assert upstream.breaker.state == "open"
    untouched = FakeCall("never")
    with pytest.raises(Unavailable) as err:
        await upstream.call(untouched, Deadline(10))
    assert err.value.reason == "UPSTREAM_CIRCUIT_OPEN" and err.value.retry_after_s > 0
    assert untouched.timeouts == []
    now[0] += 5.0
    assert await upstream.call(FakeCall("back"), Deadline(10)) == "back"
    assert upstream.breaker.state == "closed"


async def test_in_flight_cap_fails_fast():
    upstream = upstream_for("svc", SETTINGS)
    gate = asyncio.Event()

    async def slow(timeout):
        await gate.wait()
        return "slow"

    first = asyncio.create_task(upstream.call(slow, Deadline(10)))
    await asyncio.sleep(0)
    with pytest.raises(Unavailable) as err:
        await upstream.call(FakeCall("x"), Deadline(10))
    assert err.value.reason == "UPSTREAM_OVERLOADED"
    gate.set()
    assert await first == "slow"
    assert upstream.in_flight == 0


async def test_deadline_caps_every_hop_and_a_caller_deadline_is_not_an_upstream_failure():
    upstream = upstream_for("svc", SETTINGS)
    call = FakeCall(*[rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)] * 3)
    for _ in range(3):
        with pytest.raises(DeadlineExceeded):
            await upstream.call(call, Deadline(0.5), cap=2.0)
    assert all(t <= 0.5 for t in call.timeouts)
    assert upstream.breaker.state == "closed"
    # A hop that ran out its own cap counts against the calling tenant's breaker only.
    hop_bound = FakeCall(*[rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)] * 2)
    for _ in range(2):
        with pytest.raises(DeadlineExceeded):
            await upstream.call(hop_bound, Deadline(10), cap=0.1)
    assert upstream.breaker.state == "closed" and upstream.tenant_breaker_state("") == "open"
    with pytest.raises(DeadlineExceeded):
        Deadline(-1).timeout()
