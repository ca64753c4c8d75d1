"""Upstream.stream (services/common/resilience.py): retries before the first item only, breaker accounting, slot release."""

from contextlib import aclosing

import grpc
import pytest

from services.common.errors import InvalidArgument, Unavailable
from services.common.resilience import Deadline, Incomplete, Observer, Policy, Upstream

POLICY = Policy(breaker_failures=2, breaker_reset_s=5.0, retry_attempts=2, retry_base_delay_s=0.001,
                retry_max_delay_s=0.002, max_in_flight=1)


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="upstream says no")


class Recorder(Observer):
    def __init__(self):
        self.retries = 0
        self.rejections: list[str] = []

    def retried(self) -> None:
        self.retries += 1

    def rejected(self, reason: str) -> None:
        self.rejections.append(reason)


def scripted(*attempts):
    """A stream source whose attempts are scripted: items to yield, then an exception to raise (or None)."""
    calls = []

    async def start(timeout: float):
        items, failure = attempts[len(calls)]
        calls.append(timeout)
        for item in items:
            yield item
        if failure is not None:
            raise failure
    return start, calls


async def collect(stream) -> list:
    return [item async for item in stream]


async def test_unavailable_before_the_first_item_is_retried_and_counted():
    observer = Recorder()
    upstream = Upstream("svc", POLICY, observer=observer)
    start, calls = scripted(([], rpc_error(grpc.StatusCode.UNAVAILABLE)), (["a", "b"], None))
    assert await collect(upstream.stream(start, Deadline(10))) == ["a", "b"]
    assert len(calls) == 2 and observer.retries == 1 and upstream.breaker.state == "closed"


async def test_after_the_first_item_a_failure_is_final():
    upstream = Upstream("svc", POLICY)
    start, calls = scripted((["a"], rpc_error(grpc.StatusCode.UNAVAILABLE)), (["never"], None))
    received = []
    with pytest.raises(Unavailable) as err:
        async for item in upstream.stream(start, Deadline(10)):
            received.append(item)
    assert received == ["a"] and len(calls) == 1
    assert err.value.reason == "UPSTREAM_UNAVAILABLE" and err.value.metadata == {"upstream": "svc"}


async def test_a_stream_that_cannot_be_resent_is_not_retried():
    upstream = Upstream("svc", POLICY)
    start, calls = scripted(([], rpc_error(grpc.StatusCode.UNAVAILABLE)), (["never"], None))
    with pytest.raises(Unavailable):
        await collect(upstream.stream(start, Deadline(10), retry=False))
    assert len(calls) == 1


async def test_an_early_end_counts_as_a_failure_and_an_answered_error_as_success():
    upstream = Upstream("svc", POLICY)
    for _ in range(2):
        start, _calls = scripted((["a"], Incomplete()))
        with pytest.raises(Unavailable) as err:
            await collect(upstream.stream(start, Deadline(10)))
        assert "without a final answer" in err.value.message
    assert upstream.breaker.state == "open"
    upstream = Upstream("svc", POLICY)
    upstream.breaker.record_failure()
    start, _calls = scripted(([], InvalidArgument("the upstream says this request is wrong")))
    with pytest.raises(InvalidArgument):
        await collect(upstream.stream(start, Deadline(10)))
    upstream.breaker.record_failure()
    assert upstream.breaker.state == "closed", "the answered error reset the failure count"


async def test_leaving_a_stream_early_frees_its_slot_and_closes_the_source():
    observer = Recorder()
    upstream = Upstream("svc", POLICY, observer=observer)
    closed = []

    async def start(timeout: float):
        try:
            yield "a"
            yield "b"
        finally:
            closed.append(True)

    async with aclosing(upstream.stream(start, Deadline(10))) as stream:
        assert await anext(stream) == "a"
        assert upstream.in_flight == 1
        with pytest.raises(Unavailable) as err:
            await collect(upstream.stream(start, Deadline(10)))
        assert err.value.reason == "UPSTREAM_OVERLOADED" and observer.rejections == ["overloaded"]
    assert closed == [True] and upstream.in_flight == 0
    assert await collect(upstream.stream(start, Deadline(10))) == ["a", "b"]
