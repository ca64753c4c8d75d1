"""The rate-limit service: the sliding window in process (a fake clock), exact totals
across two real replicas sharing Redis, the window in Redis in real time, and
fail-open and fail-closed when Redis is down, as the metrics show."""

import random
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from gateway.ratelimit.config import Limit, RateLimitSettings
from gateway.ratelimit.counters import BUCKETS, Hit, MemoryCounters
from gateway.ratelimit.service import RateLimitServicer
from tests.gateway.procs import start_gateway_service
from tests.harness import assert_grpc_error, free_port, start_redis

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


async def test_twice_the_limit_cannot_pass_across_a_window_boundary():
    """Fixed windows let N pass at 59.9 s and N more at 60.1 s; a sliding window does not."""
    clock = Clock(59.9)
    counters = MemoryCounters(clock)
    hit = Hit("k", 60, 1, 5)
    assert all(c.allowed for c in await counters.hit([hit] * 5))
    clock.now = 60.1
    refused = await counters.hit([hit] * 3)
    assert not any(c.allowed for c in refused)
    # The hits of 59.9 s leave once their bucket is more than a window behind.
    assert refused[0].retry_in_s == pytest.approx(120.0 - 60.1)
    clock.now = 119.99
    assert not (await counters.hit([hit]))[0].allowed
    clock.now = 120.0
    assert [c.allowed for c in await counters.hit([hit] * 6)] == [True] * 5 + [False]


async def test_refused_requests_are_not_counted():
    clock = Clock(1000.0)
    counters = MemoryCounters(clock)
    hit = Hit("k", 60, 1, 2)
    results = [(await counters.hit([hit]))[0] for _ in range(10)]
    assert [c.allowed for c in results] == [True, True] + [False] * 8
    assert all(c.used == 2 for c in results[1:])
    clock.now += 61.0
    assert (await counters.hit([hit]))[0].allowed


async def test_no_interval_of_one_window_ever_holds_more_than_the_limit():
    """Random bursts and pauses for ten windows: every interval of length T holds at
    most N allowed requests, and a client that keeps asking gets nearly N per T."""
    rng = random.Random(7)
    window, limit = 60, 20
    clock = Clock(0.0)
    counters = MemoryCounters(clock)
    allowed_at = []
    while clock.now < 10 * window:
        clock.now += rng.choice([0.0, 0.01, 0.3, 1.7, 4.0])
        if (await counters.hit([Hit("k", window, 1, limit)]))[0].allowed:
            allowed_at.append(clock.now)
    for i, start in enumerate(allowed_at):
        inside = [t for t in allowed_at[i:] if t < start + window]
        assert len(inside) <= limit, f"{len(inside)} allowed in [{start}, {start + window})"
    # Hits are remembered at most one bucket longer than the window.
    assert len(allowed_at) >= 10 * window / (window + window / BUCKETS) * limit - limit


async def test_memory_counters_report_when_a_request_would_pass():
    clock = Clock(30.0)
    counters = MemoryCounters(clock)
    (first,) = await counters.hit([Hit("k", 60, 1, 1)])
    assert first.allowed and first.reset_in_s == pytest.approx(61.0 - 0.0)
    clock.now = 45.0
    (second,) = await counters.hit([Hit("k", 60, 1, 1)])
    assert not second.allowed and second.retry_in_s == pytest.approx(91.0 - 45.0)
    (too_big,) = await counters.hit([Hit("k", 60, 2, 1)])
    assert not too_big.allowed and too_big.retry_in_s == 60


def servicer(*limits: Limit, failure_mode="open") -> RateLimitServicer:
    settings = RateLimitSettings(limits=limits, failure_mode=failure_mode)
    return RateLimitServicer(settings, MemoryCounters())


async def test_limits_per_value_with_overrides_and_headers():
    rls = servicer(Limit(descriptor="key", requests_per_unit=2, overrides={"big": 3}))
    results = [await rls.ShouldRateLimit(request({"key": "a"}), None) for _ in range(3)]
    assert [r.overall_code for r in results] == [Response.OK, Response.OK, Response.OVER_LIMIT]
    status = results[1].statuses[0]
    assert status.current_limit.requests_per_unit == 2 and status.current_limit.unit == Response.RateLimit.MINUTE
    # The window is a minute, and a hit is remembered for at most one 1/60 bucket more.
    assert status.limit_remaining == 0 and 0 < status.duration_until_reset.ToNanoseconds() <= 61e9
    over = results[2]
    assert b"2 requests per minute for key 'a'" in over.raw_body
    headers = {h.key: h.value for h in over.response_headers_to_add}
    assert set(headers) == {"retry-after", "grpc-status-details-bin"} and int(headers["retry-after"]) >= 59
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
                     {"descriptor": "remote_address", "requests_per_unit": 1000, "unit": "hour"},
                     {"descriptor": "burst", "requests_per_unit": 3, "unit": "second"}]}


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
def test_the_window_slides_in_redis_too(two_replicas):
    """Three per second, in Redis time: after three quick calls the next one passes only
    once the first has left the window, a full second later (not at the next second)."""
    port = two_replicas[0]
    limited = request({"burst": "b"})
    start = time.monotonic()
    assert [should(port, limited).overall_code for _ in range(3)] == [Response.OK] * 3
    refused = should(port, limited)
    assert refused.overall_code == Response.OVER_LIMIT
    while should(port, limited).overall_code != Response.OK:
        assert time.monotonic() - start < 5, "the window never freed up"
    # Measured around the calls, so Redis's own clock saw at least as long.
    assert time.monotonic() - start >= 1.0


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name))


@pytest.mark.integration
def test_store_down_fails_open_or_closed_as_configured(tmp_path):
    redis_process, url = start_redis(tmp_path, "redis-doomed")
    started = []
    try:
        metrics = {mode: free_port() for mode in ("open", "closed")}
        for mode in ("open", "closed"):
            started.append(start_gateway_service("ratelimit", {"redis_url": url, "failure_mode": mode,
                                                               "metrics_port": metrics[mode]},
                                                 tmp_path, f"rl-{mode}", config=LIMITS))
        (_, open_port), (_, closed_port) = started
        assert should(closed_port, request({"key": "k"})).overall_code == Response.OK
        assert should(open_port, request({"key": "k"})).overall_code == Response.OK
        assert metric(metrics["open"], "llmsuite_ratelimit_store_up") == 1
        redis_process.stop()
        assert should(open_port, request({"key": "k"})).overall_code == Response.OK
        # Failing open is visible: the store is down and the request went unchecked.
        assert metric(metrics["open"], "llmsuite_ratelimit_store_up") == 0
        assert metric(metrics["open"], 'llmsuite_ratelimit_decisions_total{code="unchecked",descriptor="key"}') == 1
        with pytest.raises(grpc.RpcError) as err:
            should(closed_port, request({"key": "k"}))
        assert_grpc_error(err.value, grpc.StatusCode.UNAVAILABLE, "rate limiting is unavailable")
        # Redis back on the same port: the closed replica recovers without a restart.
        redis_process, _ = start_redis(tmp_path, "redis-back", port=int(url.rsplit(":", 1)[1].split("/")[0]))
        assert should(closed_port, request({"key": "k"})).overall_code == Response.OK
        assert should(open_port, request({"key": "k"})).overall_code == Response.OK
        assert metric(metrics["open"], "llmsuite_ratelimit_store_up") == 1
    finally:
        redis_process.stop()
        for process, _ in started:
            process.stop()
