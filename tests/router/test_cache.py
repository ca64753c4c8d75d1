"""Cache keys, anchor-term guard, stores and the semantic scan (no processes)."""

import asyncio

import numpy as np
import pytest
import redis

from services.router.cache import CachedAnswer, ResponseCache, Scope, exact_key
from services.router.documents import assemble
from services.router.sessions import SessionStore
from services.router.stores import MemoryStore, RedisStore
from services.common.sampling import Sampling
from services.router.validation import Turn
from tests.harness import free_port

SCOPE = Scope("acme", "light", "default@1#abc", Sampling(max_tokens=64), ("", 4, None))
TURNS = (Turn("user", "What is the capital of France?"),)
ANSWER = CachedAnswer("Paris.", 1, 10, 2, "light", "1", 2)


def test_exact_key_ignores_formatting_but_not_content():
    key = exact_key(SCOPE, TURNS)
    assert key == exact_key(SCOPE, (Turn("user", "  What is the   capital of France?\n"),))
    assert key != exact_key(SCOPE, (Turn("user", "What is the capital of Spain?"),))
    assert key != exact_key(SCOPE, (Turn("assistant", "What is the capital of France?"),))


@pytest.mark.parametrize("change", [
    {"tenant": "globex"},
    {"model": "full"},
    {"template": "default@2#abc"},
    {"sampling": Sampling(max_tokens=65)},
    {"sampling": Sampling(max_tokens=64, temperature=0.7)},
    {"retrieval": ("docs", 4, None)},
])
def test_exact_key_covers_tenant_model_template_sampling_and_retrieval(change):
    other = Scope(**{**SCOPE.__dict__, **change})
    assert exact_key(other, TURNS) != exact_key(SCOPE, TURNS)
    assert other.semantic_key() != SCOPE.semantic_key()


async def test_memory_store_expires_and_evicts():
    now = [0.0]
    store = MemoryStore(max_keys=2, clock=lambda: now[0])
    await store.set("a", b"1", ttl_s=10)
    await store.set("b", b"2", ttl_s=10)
    assert await store.get("a") == b"1"  # a is now the most recently used
    await store.set("c", b"3", ttl_s=10)
    assert await store.get("b") is None and await store.get("a") == b"1"
    now[0] = 11
    assert await store.get("a") is None
    await store.push("l", [b"x", b"y", b"z"], max_len=2, ttl_s=5)
    assert await store.items("l") == [b"y", b"z"] and await store.items("l", last=1) == [b"z"]


def _unit(*values) -> np.ndarray:
    vector = np.zeros(384, dtype=np.float32)
    vector[: len(values)] = values
    return vector / np.linalg.norm(vector)


async def test_semantic_lookup_needs_threshold_scope_and_anchors():
    cache = ResponseCache(MemoryStore(100), MemoryStore(10), semantic_max_entries=10)
    key = exact_key(SCOPE, TURNS)
    await cache.put(key, ANSWER, ttl_s=60)
    await cache.add_vector(SCOPE, TURNS[0].content, _unit(1, 0), key, ttl_s=60)

    close = _unit(1, 0.1)  # cosine 0.995
    hit = await cache.find_similar(SCOPE, "Which city is France's capital?", close, threshold=0.95)
    assert hit is not None and hit.answer == ANSWER and hit.similarity > 0.99
    assert await cache.find_similar(SCOPE, "Which city is France's capital?", _unit(1, 1), 0.95) is None
    assert await cache.find_similar(SCOPE, "What is the capital of Spain?", close, 0.95) is None
    other_tenant = Scope(**{**SCOPE.__dict__, "tenant": "globex"})
    assert await cache.find_similar(other_tenant, "Which city is France's capital?", close, 0.95) is None


async def test_semantic_entry_without_live_answer_is_a_miss():
    cache = ResponseCache(MemoryStore(100), MemoryStore(10), semantic_max_entries=10)
    await cache.add_vector(SCOPE, TURNS[0].content, _unit(1, 0), exact_key(SCOPE, TURNS), ttl_s=60)
    assert await cache.find_similar(SCOPE, TURNS[0].content, _unit(1, 0), 0.9) is None


async def test_sessions_are_per_tenant_bounded_and_start_with_a_user_turn():
    sessions = SessionStore(MemoryStore(10), max_turns=3, ttl_s=60)
    await sessions.append("acme", "s1", [Turn("user", "one"), Turn("assistant", "1")])
    await sessions.append("acme", "s1", [Turn("user", "two"), Turn("assistant", "2")])
    assert [t.content for t in await sessions.history("acme", "s1", 10)] == ["two", "2"]
    assert await sessions.history("globex", "s1", 10) == ()


class Hit:
    def __init__(self, doc, words, title=""):
        self.document_id, self.chunk_index, self.score, self.title = doc, 0, 0.5, title
        self.text = " ".join(["w"] * words)


def test_context_is_assembled_within_the_token_budget():
    hits = [Hit("a", 40), Hit("b", 40), Hit("c", 40)]
    assert [d.document_id for d in assemble(hits, budget_tokens=120)] == ["a", "b"]
    assert assemble(hits, budget_tokens=0) == []
    first = assemble([Hit("big", 500)], budget_tokens=100)
    assert len(first) == 1 and len(first[0].text.split()) == 100 - 16


@pytest.mark.integration
async def test_redis_store_backs_answers_vectors_and_sessions(redis_url):
    store = RedisStore(redis_url, timeout_s=1.0)
    try:
        cache = ResponseCache(store, store, semantic_max_entries=2)
        key = exact_key(SCOPE, TURNS)
        await cache.put(key, ANSWER, ttl_s=60)
        assert await cache.get(key) == ANSWER
        for n in range(3):  # the list keeps the newest two
            await cache.add_vector(SCOPE, TURNS[0].content, _unit(1, n * 0.01), key, ttl_s=60)
        assert len(await store.items(SCOPE.semantic_key())) == 2
        hit = await cache.find_similar(SCOPE, "Which city is France's capital?", _unit(1, 0.01), 0.95)
        assert hit is not None and hit.answer == ANSWER

        sessions = SessionStore(store, max_turns=4, ttl_s=60)
        await sessions.append("acme", "redis-session", [Turn("user", "one"), Turn("assistant", "1")])
        assert [t.content for t in await sessions.history("acme", "redis-session", 10)] == ["one", "1"]
        assert await sessions.history("globex", "redis-session", 10) == ()
    finally:
        await store.close()


@pytest.mark.integration
async def test_a_burst_of_commands_holds_no_more_connections_than_the_pool(redis_url):
    store = RedisStore(redis_url, timeout_s=2.0, max_connections=4)  # unbounded, this burst opens 200
    watcher = redis.Redis.from_url(redis_url)
    try:
        before = len(watcher.client_list())
        await asyncio.gather(*(store.set(f"burst:{n}", b"x" * 64, ttl_s=60) for n in range(200)))
        assert [await store.get(f"burst:{n}") for n in (0, 199)] == [b"x" * 64] * 2
        assert len(watcher.client_list()) - before <= 4
    finally:
        await store.close()
        watcher.close()


async def test_unreachable_redis_reads_as_a_miss():
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    try:
        cache = ResponseCache(store, store, semantic_max_entries=2)
        await cache.put("k", ANSWER, ttl_s=60)
        assert await cache.get("k") is None
        assert await cache.find_similar(SCOPE, "q", _unit(1), 0.5) is None
        assert await SessionStore(store, 4, 60).history("acme", "s", 10) == ()
    finally:
        await store.close()
