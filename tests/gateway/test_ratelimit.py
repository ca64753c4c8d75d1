"""The rate-limit service: window arithmetic in process, and exact totals across two
real replicas sharing Redis, with fail-open and fail-closed when Redis is down."""

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from gateway.ratelimit.config import Limit, RateLimitSettings
from gateway.ratelimit.counters import Hit, MemoryCounters
from gateway.ratelimit.service import RateLimitServicer
from tests.gateway.procs import start_gateway_service
from tests.harness import start_redis
from tests.harness import assert_grpc_error

Response = rls_pb2.RateLimitResponse


def request(*descriptors: dict[str, str], domain: str = "llmsuite", hits: int = 0) -> rls_pb2.RateLimitRequest:
    return rls_pb2.RateLimitRequest(domain=domain, hits_addend=hits, descriptors=[
        ratelimit_pb2.RateLimitDescriptor(entries=[
            ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in d.items()])
        for d in descriptors])


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_memory_counters_reset_at_the_window_boundary():
    clock = Clock(120.0)
    counters = MemoryCounters(clock)
    hit = Hit("k", 60, 1)
    assert [c.value for c in await counters.hit([hit, hit])] == [1, 2]
    clock.now = 179.5
    (count,) = await counters.hit([hit])
    assert count.value == 3 and count.reset_in_s == pytest.approx(0.5)
    clock.now = 180.0
    assert (await counters.hit([hit]))[0].value == 1


def servicer(*limits: Limit, failure_mode="open") -> RateLimitServicer:
    settings = RateLimitSettings(limits=limits, failure_mode=failure_mode)
    return RateLimitServicer(settings, MemoryCounters())


async def test_limits_per_value_with_overrides_and_headers():
    rls = servicer(Limit(descriptor="key", requests_per_unit=2, overrides={"big": 3}))
    results = [await rls.ShouldRateLimit(request({"key": "a"}), None) for _ in range(3)]
    assert [r.overall_code for r in results] == [Response.OK, Response.OK, Response.OVER_LIMIT]
    status = results[1].statuses[0]
    assert status.current_limit.requests_per_unit == 2 and status.current_limit.unit == Response.RateLimit.MINUTE
    assert status.limit_remaining == 0 and 0 < status.duration_until_reset.ToNanoseconds() <= 60e9
    over = results[2]
    assert b"2 requests per minute for key 'a'" in over.raw_body
    assert [h.key for h in over.response_headers_to_add] == ["retry-after"]
    big = [await rls.ShouldRateLimit(request({"key": "big"}), None) for _ in range(4)]
    assert [r.overall_code for r in big] == [Response.OK] * 3 + [Response.OVER_LIMIT]


async def test_any_descriptor_over_limit_blocks_and_unknown_ones_pass():
    rls = servicer(Limit(descriptor="key", requests_per_unit=5), Limit(descriptor="tenant", requests_per_unit=1))
    first = await rls.ShouldRateLimit(request({"key": "a"}, {"tenant": "t"}, {"other": "x"}), None)
    second = await rls.ShouldRateLimit(request({"key": "a"}, {"tenant": "t"}, {"other": "x"}), None)
    assert first.overall_code == Response.OK and second.overall_code == Response.OVER_LIMIT
    assert [s.code for s in second.statuses] == [Response.OK, Response.OVER_LIMIT, Response.OK]
    assert not second.statuses[2].HasField("current_limit")


async def test_hits_addend_and_other_domains():
    rls = servicer(Limit(descriptor="key", requests_per_unit=5))
    assert (await rls.ShouldRateLimit(request({"key": "a"}, hits=5), None)).overall_code == Response.OK
    assert (await rls.ShouldRateLimit(request({"key": "a"}), None)).overall_code == Response.OVER_LIMIT
    other = await rls.ShouldRateLimit(request({"key": "a"}, domain="elsewhere"), None)
    assert other.overall_code == Response.OK and len(other.statuses) == 1


async def test_compound_descriptors_count_per_value_pair():
    rls = servicer(Limit(descriptor="tenant.model", requests_per_unit=1))
    assert (await rls.ShouldRateLimit(request({"tenant": "t", "model": "full"}), None)).overall_code == Response.OK
    assert (await rls.ShouldRateLimit(request({"tenant": "t", "model": "light"}), None)).overall_code == Response.OK
    blocked = await rls.ShouldRateLimit(request({"tenant": "t", "model": "full"}), None)
    assert blocked.overall_code == Response.OVER_LIMIT


def test_duplicate_limits_are_rejected():
    with pytest.raises(ValueError, match="two limits"):
        RateLimitSettings(limits=(Limit(descriptor="key", requests_per_unit=1),
                                  Limit(descriptor="key", requests_per_unit=2)))


def should(port: int, req: rls_pb2.RateLimitRequest) -> rls_pb2.RateLimitResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(req, timeout=5)


LIMITS = {"limits": [{"descriptor": "key", "requests_per_unit": 25, "unit": "hour"},
                     {"descriptor": "remote_address", "requests_per_unit": 1000, "unit": "hour"}]}


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory, redis_url):
    tmp = tmp_path_factory.mktemp("ratelimit")
    started = []
    try:
        for name in ("rl-a", "rl-b"):
            started.append(start_gateway_service("ratelimit", {"redis_url": redis_url}, tmp, name, config=LIMITS))
        yield [port for _, port in started]
    finally:
        for process, _ in started:
            process.stop()


@pytest.mark.integration
def test_a_limit_holds_exactly_across_two_replicas_under_concurrency(two_replicas):
    # 60 concurrent requests, alternating replicas, against a limit of 25 per hour.
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda i: should(two_replicas[i % 2], request({"key": "shared"})), range(60)))
    allowed = sum(r.overall_code == Response.OK for r in results)
    assert allowed == 25
    remaining = sorted(r.statuses[0].limit_remaining for r in results if r.overall_code == Response.OK)
    assert remaining == list(range(25)), "every allowed request saw a distinct count"


@pytest.mark.integration
def test_store_down_fails_open_or_closed_as_configured(tmp_path):
    redis_process, url = start_redis(tmp_path, "redis-doomed")
    started = []
    try:
        for mode in ("open", "closed"):
            started.append(start_gateway_service("ratelimit", {"redis_url": url, "failure_mode": mode},
                                                 tmp_path, f"rl-{mode}", config=LIMITS))
        (_, open_port), (_, closed_port) = started
        assert should(closed_port, request({"key": "k"})).overall_code == Response.OK
        redis_process.stop()
        assert should(open_port, request({"key": "k"})).overall_code == Response.OK
        with pytest.raises(grpc.RpcError) as err:
            should(closed_port, request({"key": "k"}))
        assert_grpc_error(err.value, grpc.StatusCode.UNAVAILABLE, "rate limiting is unavailable")
        # Redis back on the same port: the closed replica recovers without a restart.
        redis_process, _ = start_redis(tmp_path, "redis-back", port=int(url.rsplit(":", 1)[1].split("/")[0]))
        assert should(closed_port, request({"key": "k"})).overall_code == Response.OK
    finally:
        redis_process.stop()
        for process, _ in started:
            process.stop()
