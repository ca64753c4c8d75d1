"""Sliding-window counters: in this process, or atomic in Redis for many replicas.

A limit of N per window T holds over every interval of length T, not per calendar
window: with fixed windows, N requests at the end of one minute and N at the start
of the next pass within a second. Each counter keeps the hits of the last T in
`BUCKETS` sub-windows of T / BUCKETS; a request is allowed when the hits in the
current bucket and the BUCKETS before it, plus its own, stay within N, and only an
allowed request is counted. Because one bucket more than the window is counted,
no interval of length T ever holds more than N (a hit is remembered between T and
T + T / BUCKETS); a client sending steadily gets at least N per T + T / BUCKETS.

In Redis one Lua script per counter reads the clock from Redis itself, sums, decides
and increments: any number of replicas, with skewed clocks, share one exact count.
The in-process counters run the same rule (`decide`), for a single replica.
"""

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Protocol

# Sub-windows per window: the precision of "when does a hit leave the window".
BUCKETS = 60

# KEYS[1]: the counter's hash (bucket index -> hits), named with a {hash tag} so a
# cluster keeps it in one slot. ARGV: hits, limit, window in seconds, buckets.
# Returns {1 if allowed else 0, hits counted in the window (this one included when
# allowed), seconds until a request of this size would pass, seconds until every
# counted hit has left}; the times travel as strings (Lua numbers are truncated
# to integers on the way out). Mirrors `decide` below.
_SLIDING_WINDOW_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local hits = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local buckets = tonumber(ARGV[4])
local width = window / buckets
local current = math.floor(now / width)
local oldest = current - buckets
local stored = redis.call('HGETALL', KEYS[1])
local held = {}
local stale = {}
local used = 0
for i = 1, #stored, 2 do
  local index = tonumber(stored[i])
  local count = tonumber(stored[i + 1])
  if index < oldest then
    stale[#stale + 1] = stored[i]
  else
    held[#held + 1] = {index, count}
    used = used + count
  end
end
if #stale > 0 then
  redis.call('HDEL', KEYS[1], unpack(stale))
end
local allowed = used + hits <= limit
if allowed then
  redis.call('HINCRBY', KEYS[1], current, hits)
  redis.call('PEXPIRE', KEYS[1], math.ceil((window + 2 * width) * 1000))
  used = used + hits
  held[#held + 1] = {current, hits}
end
table.sort(held, function(a, b) return a[1] < b[1] end)
local retry = 0
if not allowed then
  if hits > limit then
    retry = window
  else
    local freed = 0
    for _, bucket in ipairs(held) do
      freed = freed + bucket[2]
      if used - freed + hits <= limit then
        retry = (bucket[1] + buckets + 1) * width - now
        break
      end
    end
  end
end
local reset = 0
if #held > 0 then
  reset = (held[#held][1] + buckets + 1) * width - now
end
return {allowed and 1 or 0, used, tostring(retry), tostring(reset)}
"""


@dataclass(frozen=True)
class Hit:
    name: str
    window_s: int
    hits: int
    limit: int


@dataclass(frozen=True)
class Count:
    allowed: bool
    # Hits in the window, this request's included when it was allowed.
    used: int
    # Seconds until a request of this size would be allowed; 0 when it was.
    retry_in_s: float
    # Seconds until every hit counted now has left the window.
    reset_in_s: float


def decide(buckets: dict[int, int], now: float, hit: Hit) -> Count:
    """The sliding-window rule on one counter's buckets (updated in place); the Lua
    script above is the same rule, run inside Redis."""
    width = hit.window_s / BUCKETS
    current = math.floor(now / width)
    for index in [index for index in buckets if index < current - BUCKETS]:
        del buckets[index]
    used = sum(buckets.values())
    allowed = used + hit.hits <= hit.limit
    if allowed:
        buckets[current] = buckets.get(current, 0) + hit.hits
        used += hit.hits
    retry = 0.0
    if not allowed:
        retry = float(hit.window_s)
        freed = 0
        for index in sorted(buckets):
            freed += buckets[index]
            if hit.hits <= hit.limit and used - freed + hit.hits <= hit.limit:
                retry = (index + BUCKETS + 1) * width - now
                break
    reset = (max(buckets) + BUCKETS + 1) * width - now if buckets else 0.0
    return Count(allowed, used, retry, reset)


class Counters(Protocol):
    async def hit(self, hits: list[Hit]) -> list[Count]: ...

    async def close(self) -> None: ...


class MemoryCounters:
    """Counters in this process; for a single replica (the embedded default)."""

    def __init__(self, clock=time.time):
        self._clock = clock
        # counter name -> (window seconds, buckets)
        self._counters: dict[str, tuple[int, dict[int, int]]] = {}
        self._lock = asyncio.Lock()

    async def hit(self, hits: list[Hit]) -> list[Count]:
        now = self._clock()
        async with self._lock:
            self._expire(now)
            results = []
            for hit in hits:
                _, buckets = self._counters.setdefault(f"{hit.name}:{hit.window_s}", (hit.window_s, {}))
                results.append(decide(buckets, now, hit))
        return results

    def _expire(self, now: float) -> None:
        # Drop counters whose hits have all left now and then, so memory tracks
        # active callers only.
        if len(self._counters) < 10_000:
            return
        for name, (window_s, buckets) in list(self._counters.items()):
            if not buckets or max(buckets) < math.floor(now * BUCKETS / window_s) - BUCKETS:
                del self._counters[name]

    async def close(self) -> None:
        return None


class RedisCounters:
    def __init__(self, url: str, timeout_s: float):
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._script = self._redis.register_script(_SLIDING_WINDOW_SCRIPT)

    async def hit(self, hits: list[Hit]) -> list[Count]:
        # One round trip for all descriptors; each script call is atomic on its own counter.
        async with self._redis.pipeline(transaction=False) as pipe:
            for hit in hits:
                await self._script(keys=[hit.name], args=[hit.hits, hit.limit, hit.window_s, BUCKETS], client=pipe)
            replies = await pipe.execute()
        return [Count(bool(allowed), int(used), float(retry), float(reset)) for allowed, used, retry, reset in replies]

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()
