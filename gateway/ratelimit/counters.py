"""Fixed-window counters: in this process, or atomic in Redis for many replicas.

A hit increments the counter of the current window and returns its new value, so
whichever replica answers, N allowed requests per window means N in total. In Redis
one Lua script does the increment, sets the expiry and reads the clock from Redis
itself: replicas with skewed clocks still agree on the window boundaries.
"""

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Protocol

# KEYS[1]: counter name (with a {hash tag} so the per-window key lands in the same
# cluster slot); ARGV[1]: hits; ARGV[2]: window length in seconds.
# Returns {count, seconds until the window resets (as a string: Lua numbers
# would be truncated to integers on the way out)}.
_HIT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[2])
local index = math.floor(now / window)
local key = KEYS[1] .. ':' .. index
local count = redis.call('INCRBY', key, ARGV[1])
if redis.call('TTL', key) < 0 then
  redis.call('EXPIRE', key, window + 1)
end
return {count, tostring((index + 1) * window - now)}
"""


@dataclass(frozen=True)
class Hit:
    name: str
    window_s: int
    hits: int


@dataclass(frozen=True)
class Count:
    value: int
    reset_in_s: float


class Counters(Protocol):
    async def hit(self, hits: list[Hit]) -> list[Count]: ...

    async def close(self) -> None: ...


class MemoryCounters:
    """Counters in this process; for a single replica (the embedded default)."""

    def __init__(self, clock=time.time):
        self._clock = clock
        self._windows: dict[str, tuple[int, int]] = {}
        self._lock = asyncio.Lock()

    async def hit(self, hits: list[Hit]) -> list[Count]:
        now = self._clock()
        results = []
        async with self._lock:
            self._expire(now)
            for hit in hits:
                index = math.floor(now / hit.window_s)
                key = f"{hit.name}:{hit.window_s}"
                current_index, count = self._windows.get(key, (index, 0))
                count = (count if current_index == index else 0) + hit.hits
                self._windows[key] = (index, count)
                results.append(Count(count, (index + 1) * hit.window_s - now))
        return results

    def _expire(self, now: float) -> None:
        # Drop finished windows now and then so memory tracks active callers only.
        if len(self._windows) < 10_000:
            return
        for key, (index, _) in list(self._windows.items()):
            window_s = int(key.rsplit(":", 1)[1])
            if index < math.floor(now / window_s):
                del self._windows[key]

    async def close(self) -> None:
        return None


class RedisCounters:
    def __init__(self, url: str, timeout_s: float):
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._script = self._redis.register_script(_HIT_SCRIPT)

    async def hit(self, hits: list[Hit]) -> list[Count]:
        # One round trip for all descriptors; each script call is atomic on its own key.
        async with self._redis.pipeline(transaction=False) as pipe:
            for hit in hits:
                await self._script(keys=[hit.name], args=[hit.hits, hit.window_s], client=pipe)
            replies = await pipe.execute()
        return [Count(int(count), float(reset)) for count, reset in replies]

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()
