"""The Redis side of budgets, jobs and sessions, on a real redis-server: the Lua scripts agree with the
in-process arithmetic, concurrent clients cannot interleave a check with a debit, one idempotency key
makes one job, and an entry a consumer took and never acknowledged is claimed by another."""

import asyncio
from datetime import datetime, timezone

import pytest
import redis.asyncio as aioredis
from llmsuite.inference.v1 import inference_pb2 as pb

from services.router.counters import DAY, MINUTE, MONTH, MemoryCounters, RedisCounters, Subject, window_keys
from services.router.jobs import COMPLETED, GROUP, QUEUE, QueueStats, RedisJobs
from services.router.sessions import SessionStore
from services.router.stores import RedisStore
from services.router.validation import Turn

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(redis_url):
    connection = aioredis.Redis.from_url(redis_url)
    await connection.flushdb()
    yield connection
    await connection.aclose()


def request(prompt: str) -> bytes:
    return pb.GenerateRequest(prompt=prompt).SerializeToString()


@pytest.mark.parametrize("at", [
    datetime(2024, 2, 29, 23, 59, 59, tzinfo=timezone.utc), datetime(2024, 3, 1, 0, 0, 0, tzinfo=timezone.utc),
    datetime(2023, 12, 31, 23, 59, 30, tzinfo=timezone.utc), datetime(2100, 3, 1, 12, tzinfo=timezone.utc),
])
async def test_lua_windows_are_the_python_windows(client, at):
    now = at.timestamp()
    counters = RedisCounters(client, now=repr(now))
    await counters.record([Subject("p")], {"tokens": 3})
    keys = window_keys("p", now)
    assert {key.decode() for key in await client.keys("p:*")} == set(keys.values())
    assert [0 < await client.ttl(keys[w]) <= limit for w, limit in ((MINUTE, 120), (DAY, 2 * 86400),
                                                                     (MONTH, 62 * 86400))] == [True] * 3
    for window in (MINUTE, DAY, MONTH):
        fields, read_at = await counters.read(Subject("p"), window)
        assert fields == {"tokens": 3} and read_at == pytest.approx(now)


async def test_lua_admits_debits_and_refuses_like_the_in_process_counters(client):
    now = 1_750_000_000.5
    memory, redis = MemoryCounters(clock=lambda: now), RedisCounters(client, now=repr(now))
    tenant = Subject("tenant", tokens_per_minute=100, nano_per_day=50_000, nano_per_month=80_000)
    key = Subject("key", tokens_per_minute=40)
    steps = [("admit", 30, 3_000), ("debit", 25, 300.0), ("debit", 25, 300.0), ("admit", 5, 500),
             ("debit", 50, 0.0), ("debit", 50, 1_000.0), ("admit", 1, 1)]
    for operation, amount, price in steps:
        outcomes = []
        for counters in (memory, redis):
            if operation == "admit":
                refusal = await counters.admit([tenant, key], amount, price)
                outcomes.append(None if refusal is None else (refusal.subject, refusal.window))
            else:
                outcomes.append(await counters.debit([tenant, key], amount, price))
        assert outcomes[0] == outcomes[1], (operation, amount, price, outcomes)
    for subject in (tenant, key):
        for window in (MINUTE, DAY, MONTH):
            assert (await memory.read(subject, window))[0] == (await redis.read(subject, window))[0]
    assert (await redis.read(key, MINUTE))[0]["tokens"] == 40


async def test_concurrent_clients_never_pass_a_limit_by_more_than_one_prompt(redis_url):
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(4)]
    await clients[0].flushdb()
    subject = Subject("race", tokens_per_minute=1_000)
    prompt_tokens, answer_tokens = 37, 60

    async def request(counters: RedisCounters) -> int:
        if await counters.admit([subject], prompt_tokens, 0) is not None:
            return 0
        sent = 0
        for _ in range(answer_tokens // 6):
            taken = await counters.debit([subject], 6, 0.0)
            sent += taken
            if taken < 6:
                break
        return prompt_tokens + sent

    try:
        counted = await asyncio.gather(*(request(RedisCounters(clients[i % 4])) for i in range(60)))
        used = (await RedisCounters(clients[0]).read(subject, MINUTE))[0]["tokens"]
    finally:
        for connection in clients:
            await connection.aclose()
    assert sum(counted) == used
    assert 1_000 <= used <= 1_000 + prompt_tokens
    assert sum(1 for tokens in counted if tokens == 0) > 0, "some requests were refused"


async def test_redis_store_sets_indexes_and_session_deletion(redis_url):
    store = RedisStore(redis_url, timeout_s=1.0)
    try:
        assert await store.set_new("once", b"1", 60) and not await store.set_new("once", b"2", 60)
        assert await store.get("once") == b"1"
        sessions = SessionStore(store, max_turns=10, ttl_s=60, clock=lambda: 1_000.0)
        await sessions.append("acme", "s", [Turn("user", "hi"), Turn("assistant", "hello")], cache_key="k1",
                              cache_ttl_s=30)
        sessions._clock = lambda: 1_001.0
        await sessions.append("acme", "t", [Turn("user", "yo"), Turn("assistant", "hey")], cache_key="k2")
        assert [sid for sid, _ in await sessions.page("acme", 0, 10)] == ["t", "s"], "newest first"
        assert await sessions.page("globex", 0, 10) == []
        stored = await sessions.get("acme", "s")
        assert [t.content for t in stored.turns] == ["hi", "hello"] and stored.updated_at == 1_000.0
        assert await sessions.get("globex", "s") is None
        assert await sessions.delete("acme", "s") == ["k1"]
        assert await sessions.delete("acme", "s") is None
        assert [sid for sid, _ in await sessions.page("acme", 0, 10)] == ["t"]
        sessions._clock = lambda: 1_061.5
        assert await sessions.page("acme", 0, 10) == [], "a session is listed for session_ttl_s after its last turn"
    finally:
        await store.close()


async def test_one_idempotency_key_makes_one_job_even_when_submitted_at_once(client):
    jobs = [RedisJobs(client) for _ in range(5)]
    submitted = await asyncio.gather(*(j.submit("acme", "ci", "nightly", [request("a"), request("b")], 60)
                                       for j in jobs))
    assert len({s.job_id for s in submitted}) == 1 and sum(s.created for s in submitted) == 1
    assert await client.xlen(QUEUE) == 2, "one job's entries, queued once"
    other = await jobs[0].submit("globex", "", "nightly", [request("a")], 60)
    assert other.created and other.job_id != submitted[0].job_id


async def test_a_pending_entry_is_claimed_once_idle_and_results_are_stored_once(client):
    jobs = RedisJobs(client)
    await jobs.ensure_group()
    await jobs.ensure_group()  # a second worker's start: the group exists
    job_id = (await jobs.submit("acme", "", "k", [request("a"), request("b")], 60)).job_id
    taken = await jobs.take("dead", 1, block_s=0.1)
    assert [(e.job_id, e.index) for e in taken] == [(job_id, 0)]
    assert await jobs.claim_stale("alive", idle_s=60, count=10) == [], "not idle for long yet"
    while (await client.xpending_range(QUEUE, GROUP, "-", "+", 1))[0]["time_since_delivered"] < 60:
        await asyncio.sleep(0.01)  # poll interval; the entry's idle time decides
    claimed = await jobs.claim_stale("alive", idle_s=0.05, count=10)
    assert [e.entry_id for e in claimed] == [taken[0].entry_id]
    await jobs.keep("alive", [claimed[0].entry_id])
    assert await jobs.claim_stale("third", idle_s=0.05, count=10) == [], "kept alive by its heartbeat"

    assert await jobs.put_result(job_id, 0, b"one", True)
    assert not await jobs.put_result(job_id, 0, b"again", True)
    await jobs.ack([claimed[0].entry_id])
    rest = await jobs.take("alive", 5, block_s=0.1)
    assert [(e.job_id, e.index) for e in rest] == [(job_id, 1)]
    assert await jobs.put_result(job_id, 1, b"two", False)
    await jobs.ack([rest[0].entry_id])
    record = await jobs.job(job_id)
    assert (record.state, record.succeeded, record.failed) == (COMPLETED, 1, 1)
    assert await jobs.results(job_id) == {0: b"one", 1: b"two"}
    assert await client.xlen(QUEUE) == 0 and (await client.xpending(QUEUE, GROUP))["pending"] == 0
    assert 0 < await client.pttl(f"llmsuite:jobs:{job_id}:results") <= 60_000


async def test_queue_stats_count_waiting_and_pending_entries_and_age_the_oldest(client):
    jobs = RedisJobs(client)
    await jobs.ensure_group()
    assert await jobs.queue_stats() == QueueStats(0, 0, 0.0)
    job_id = (await jobs.submit("acme", "", "k", [request("a"), request("b"), request("c")], 60)).job_id
    taken = await jobs.take("w", 1, block_s=0.1)
    stats = await jobs.queue_stats()
    assert (stats.waiting, stats.pending) == (2, 1)
    seconds, micros = await client.time()
    oldest_ms = int(taken[0].entry_id.split("-")[0])
    assert stats.oldest_age_s == pytest.approx(seconds + micros / 1e6 - oldest_ms / 1000, abs=0.5)
    await jobs.put_result(job_id, 0, b"one", True)
    await jobs.ack([taken[0].entry_id])
    assert (await jobs.queue_stats()).pending == 0
