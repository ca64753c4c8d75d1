"""Upstream.stream (services/common/resilience.py): retries before the first item only, breaker accounting, slot release."""

import asyncio
from contextlib import aclosing

import grpc
import pytest

from services.common.context import tenant_var
from services.common.errors import DeadlineExceeded, InvalidArgument, Unavailable
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


# Tenant isolation: the calling tenant comes from the request context (tenant_var).

TENANT_POLICY = Policy(breaker_failures=2, breaker_reset_s=5.0, retry_attempts=0, max_in_flight=8,
                       max_in_flight_per_tenant=2)


async def as_tenant(tenant: str, awaitable):
    """Runs `awaitable` in a task of its own whose request context names `tenant`."""
    async def run():
        tenant_var.set(tenant)
        return await awaitable
    return await asyncio.create_task(run())


async def test_hop_timeouts_open_only_the_calling_tenants_breaker():
    now = [100.0]
    observer = Recorder()
    upstream = Upstream("svc", TENANT_POLICY, observer=observer, clock=lambda: now[0])
    slow, _calls = scripted(*[([], rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED))] * 3)
    for _ in range(2):
        with pytest.raises(DeadlineExceeded):
            await as_tenant("a", collect(upstream.stream(slow, Deadline(10), cap=0.1)))
    assert upstream.tenant_breaker_state("a") == "open" and upstream.breaker.state == "closed"
    assert upstream.tracked_tenants() == ["a"]
    with pytest.raises(Unavailable) as err:
        await as_tenant("a", collect(upstream.stream(slow, Deadline(10), cap=0.1)))
    assert err.value.reason == "UPSTREAM_CIRCUIT_OPEN" and err.value.metadata["scope"] == "tenant"
    assert observer.rejections == ["tenant_breaker_open"]
    # Meanwhile another tenant's calls pass, and after the reset time tenant a's probe does too.
    fine, _ = scripted((["ok"], None), (["ok"], None))
    assert await as_tenant("b", collect(upstream.stream(fine, Deadline(10), cap=0.1))) == ["ok"]
    now[0] += 5.0
    assert await as_tenant("a", collect(upstream.stream(fine, Deadline(10), cap=0.1))) == ["ok"]
    assert upstream.tenant_breaker_state("a") == "closed" and upstream.tracked_tenants() == []


async def test_upstream_faults_still_open_the_shared_breaker_for_every_tenant():
    upstream = Upstream("svc", TENANT_POLICY)
    down, _ = scripted(*[([], rpc_error(grpc.StatusCode.UNAVAILABLE))] * 2)
    for tenant in ("a", "b"):
        with pytest.raises(Unavailable):
            await as_tenant(tenant, collect(upstream.stream(down, Deadline(10))))
    assert upstream.breaker.state == "open"
    untouched, calls = scripted((["never"], None))
    with pytest.raises(Unavailable) as err:
        await as_tenant("c", collect(upstream.stream(untouched, Deadline(10))))
    assert err.value.reason == "UPSTREAM_CIRCUIT_OPEN" and "scope" not in err.value.metadata and calls == []


async def test_a_tenant_holds_at_most_its_share_of_the_slots():
    observer = Recorder()
    upstream = Upstream("svc", TENANT_POLICY, observer=observer)
    gate = asyncio.Event()

    async def held(timeout: float):
        await gate.wait()
        yield "done"

    holders = [asyncio.create_task(as_tenant("a", collect(upstream.stream(held, Deadline(10)))))
               for _ in range(2)]
    while upstream.tenant_in_flight("a") < 2:
        await asyncio.sleep(0)
    with pytest.raises(Unavailable) as err:
        await as_tenant("a", collect(upstream.stream(held, Deadline(10))))
    assert err.value.reason == "UPSTREAM_TENANT_LIMIT" and observer.rejections == ["tenant_limit"]
    other = asyncio.create_task(as_tenant("b", collect(upstream.stream(held, Deadline(10)))))
    while upstream.tenant_in_flight("b") < 1:
        await asyncio.sleep(0)
    assert upstream.in_flight == 3
    gate.set()
    assert await asyncio.gather(*holders, other) == [["done"]] * 3
    # Idle tenants are forgotten: the table holds only tenants active right now.
    assert upstream.in_flight == 0 and upstream.tracked_tenants() == []
