"""Key-value, list, set and index storage for cache, sessions and request records: Redis, or in process.

Redis (REDIS_URL) lets every router replica share answers and sessions. Without
it each process keeps its own, bounded by entry count (LRU) and TTL; that suits
one replica in development. Both stores expose the same few async operations:
values, lists (session turns, vectors), sets (the cache keys a session wrote) and
indexes (members ordered by a score: a tenant's sessions by last use).
Store failures raise StoreError; callers treat them as a miss rather than failing
the request, since cache and sessions are optimisations of the answer path.
"""

import time
from collections import OrderedDict
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError


class StoreError(Exception):
    """The store could not be reached or answered badly."""


def _ms(ttl_s: float) -> int:
    return max(int(ttl_s * 1000), 1)


class Store(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def push(self, key: str, items: list[bytes], max_len: int, ttl_s: float) -> None:
        """Appends items to a list, keeps its last max_len, and restarts its TTL."""

    async def items(self, key: str, last: int = 0) -> list[bytes]:
        """The list's items, oldest first; only the last `last` when it is positive."""

    async def set_new(self, key: str, value: bytes, ttl_s: float) -> bool:
        """Sets the value only when the key does not exist; says whether it did so."""

    async def delete(self, key: str) -> bool:
        """Removes the key; says whether it existed."""

    async def members_add(self, key: str, member: str, ttl_s: float) -> None:
        """Adds to a set and restarts its TTL."""

    async def members(self, key: str) -> list[str]: ...

    async def index_put(self, key: str, member: str, score: float, ttl_s: float) -> None:
        """Sets a member's score in an index and restarts the index's TTL."""

    async def index_page(self, key: str, min_score: float, offset: int, count: int) -> list[tuple[str, float]]:
        """Members scoring at least min_score, highest first, from `offset`; lower ones are dropped."""

    async def index_score(self, key: str, member: str) -> float | None: ...

    async def index_remove(self, key: str, member: str) -> bool: ...

    async def close(self) -> None: ...


class MemoryStore:
    """In-process store: LRU over keys, each key with its own expiry."""

    def __init__(self, max_keys: int, clock=time.monotonic):
        self._max_keys = max_keys
        self._clock = clock
        self._data: OrderedDict[str, tuple[float, bytes | list[bytes]]] = OrderedDict()

    def _live(self, key: str):
        entry = self._data.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._clock():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def _put(self, key: str, value, ttl_s: float) -> None:
        self._data[key] = (self._clock() + ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self._max_keys:
            self._data.popitem(last=False)

    async def get(self, key: str) -> bytes | None:
        value = self._live(key)
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self._put(key, value, ttl_s)

    async def push(self, key: str, items: list[bytes], max_len: int, ttl_s: float) -> None:
        current = self._live(key)
        values = (list(current) if isinstance(current, list) else []) + list(items)
        self._put(key, values[-max_len:], ttl_s)

    async def items(self, key: str, last: int = 0) -> list[bytes]:
        value = self._live(key)
        if not isinstance(value, list):
            return []
        return list(value[-last:]) if last > 0 else list(value)

    async def set_new(self, key: str, value: bytes, ttl_s: float) -> bool:
        if self._live(key) is not None:
            return False
        self._put(key, value, ttl_s)
        return True

    async def delete(self, key: str) -> bool:
        return self._live(key) is not None and self._data.pop(key, None) is not None

    def _mapping(self, key: str) -> dict:
        value = self._live(key)
        return value if isinstance(value, dict) else {}

    async def members_add(self, key: str, member: str, ttl_s: float) -> None:
        self._put(key, {**self._mapping(key), member: 0.0}, ttl_s)

    async def members(self, key: str) -> list[str]:
        return list(self._mapping(key))

    async def index_put(self, key: str, member: str, score: float, ttl_s: float) -> None:
        self._put(key, {**self._mapping(key), member: score}, ttl_s)

    async def index_page(self, key: str, min_score: float, offset: int, count: int) -> list[tuple[str, float]]:
        index = self._mapping(key)
        for member in [m for m, score in index.items() if score < min_score]:
            del index[member]
        ranked = sorted(index.items(), key=lambda item: (-item[1], item[0]))
        return ranked[offset:offset + count]

    async def index_score(self, key: str, member: str) -> float | None:
        return self._mapping(key).get(member)

    async def index_remove(self, key: str, member: str) -> bool:
        return self._mapping(key).pop(member, None) is not None

    async def close(self) -> None:
        self._data.clear()


class RedisStore:
    """Redis-backed store; every command is bounded by the client's socket timeout."""

    def __init__(self, url: str, timeout_s: float, max_connections: int = 8):
        # No client-side retries: a slow or absent Redis must cost one timeout at
        # most, after which the request goes on without cache or session.
        # A bounded pool: an unbounded one opens a connection per concurrent command,
        # so a burst leaves the replica holding more sockets than before it. Redis
        # runs commands one at a time, so more connections than this add no
        # throughput; a command waits for a free one within the same timeout.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout_s, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, retry_on_timeout=False, health_check_interval=30)
        self._client = aioredis.Redis.from_pool(pool)

    async def get(self, key: str) -> bytes | None:
        try:
            return await self._client.get(key)
        except (RedisError, OSError) as err:
            raise StoreError(f"redis get failed: {type(err).__name__}") from err

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        try:
            await self._client.set(key, value, px=max(int(ttl_s * 1000), 1))
        except (RedisError, OSError) as err:
            raise StoreError(f"redis set failed: {type(err).__name__}") from err

    async def push(self, key: str, items: list[bytes], max_len: int, ttl_s: float) -> None:
        if not items:
            return
        try:
            # One MULTI/EXEC round trip, so concurrent writers never see the list
            # longer than max_len or without a TTL.
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.rpush(key, *items)
                pipe.ltrim(key, -max_len, -1)
                pipe.pexpire(key, max(int(ttl_s * 1000), 1))
                await pipe.execute()
        except (RedisError, OSError) as err:
            raise StoreError(f"redis push failed: {type(err).__name__}") from err

    async def items(self, key: str, last: int = 0) -> list[bytes]:
        try:
            return await self._client.lrange(key, -last if last > 0 else 0, -1)
        except (RedisError, OSError) as err:
            raise StoreError(f"redis lrange failed: {type(err).__name__}") from err

    async def set_new(self, key: str, value: bytes, ttl_s: float) -> bool:
        try:
            return bool(await self._client.set(key, value, px=_ms(ttl_s), nx=True))
        except (RedisError, OSError) as err:
            raise StoreError(f"redis set failed: {type(err).__name__}") from err

    async def delete(self, key: str) -> bool:
        try:
            return bool(await self._client.delete(key))
        except (RedisError, OSError) as err:
            raise StoreError(f"redis delete failed: {type(err).__name__}") from err

    async def _transaction(self, what: str, *commands: tuple) -> list:
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                for name, *args in commands:
                    getattr(pipe, name)(*args)
                return await pipe.execute()
        except (RedisError, OSError) as err:
            raise StoreError(f"redis {what} failed: {type(err).__name__}") from err

    async def members_add(self, key: str, member: str, ttl_s: float) -> None:
        await self._transaction("sadd", ("sadd", key, member), ("pexpire", key, _ms(ttl_s)))

    async def members(self, key: str) -> list[str]:
        try:
            return [m.decode() for m in await self._client.smembers(key)]
        except (RedisError, OSError) as err:
            raise StoreError(f"redis smembers failed: {type(err).__name__}") from err

    async def index_put(self, key: str, member: str, score: float, ttl_s: float) -> None:
        await self._transaction("zadd", ("zadd", key, {member: score}), ("pexpire", key, _ms(ttl_s)))

    async def index_page(self, key: str, min_score: float, offset: int, count: int) -> list[tuple[str, float]]:
        _, page = await self._transaction(
            "zrange", ("zremrangebyscore", key, "-inf", f"({min_score!r}"),
            ("zrevrangebyscore", key, "+inf", repr(min_score), offset, count, True))
        return [(member.decode(), float(score)) for member, score in page]

    async def index_score(self, key: str, member: str) -> float | None:
        try:
            return await self._client.zscore(key, member)
        except (RedisError, OSError) as err:
            raise StoreError(f"redis zscore failed: {type(err).__name__}") from err

    async def index_remove(self, key: str, member: str) -> bool:
        try:
            return bool(await self._client.zrem(key, member))
        except (RedisError, OSError) as err:
            raise StoreError(f"redis zrem failed: {type(err).__name__}") from err

    @property
    def client(self) -> aioredis.Redis:
        """The connection pool, shared with the usage counters and the job queue."""
        return self._client

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._client.aclose()
