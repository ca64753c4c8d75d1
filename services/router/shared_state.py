"""State every router replica shares and operators change: rollouts and template versions.

JSON documents by kind ("rollout", "template") and name, and one revision counter
for them all: in Redis when `redis_url` is set (a hash `llmsuite:router:state:<kind>`
and the counter `llmsuite:router:state:revision`, no expiry), in process otherwise
(one replica). An update is an atomic read-modify-write (WATCH/MULTI in Redis), so
changes made on two replicas at once never overwrite each other.

Replicas learn of changes by polling: StateSync reads the counter every
`state_poll_interval_s` (0.25 s by default) and reloads the documents when it moved,
so a change made on one replica is served by every replica within two polls, well
under a second. Polling rather than pub/sub: a message missed during a reconnect
would leave a replica on old weights until the next change, while a poll catches
up on its next tick, for one GET per interval. The request path only reads the
replica's copy and never waits for Redis; when Redis is unreachable, replicas keep
serving the last state they read, and changes fail with UNAVAILABLE.
"""

import asyncio
import json
import logging
from typing import Callable, Mapping, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from services.common.errors import Unavailable

log = logging.getLogger(__name__)

STATE_PREFIX = "llmsuite:router:state:"
REVISION_KEY = STATE_PREFIX + "revision"
# Attempts of one update when other replicas change the same kind meanwhile.
_UPDATE_ATTEMPTS = 16

Change = Callable[[dict | None], dict]


def unavailable(operation: str) -> Unavailable:
    return Unavailable(f"the shared state store (Redis) is unavailable; {operation} was not made, retry",
                       reason="STATE_UNAVAILABLE", retry_after_s=1.0)


class SharedState(Protocol):
    async def revision(self) -> int: ...

    async def documents(self, kind: str) -> dict[str, dict]: ...

    async def update(self, kind: str, name: str, change: Change) -> dict:
        """Applies `change` to the document (None when there is none yet) and stores what it returns;
        exceptions from `change` pass through and store nothing."""

    async def close(self) -> None: ...


class MemoryState:
    """One process's state: for a single replica without Redis."""

    def __init__(self) -> None:
        self._revision = 0
        self._kinds: dict[str, dict[str, dict]] = {}

    async def revision(self) -> int:
        return self._revision

    async def documents(self, kind: str) -> dict[str, dict]:
        return json.loads(json.dumps(self._kinds.get(kind, {})))

    async def update(self, kind: str, name: str, change: Change) -> dict:
        current = self._kinds.get(kind, {}).get(name)
        new = change(json.loads(json.dumps(current)) if current is not None else None)
        self._kinds.setdefault(kind, {})[name] = json.loads(json.dumps(new))
        self._revision += 1
        return new

    async def close(self) -> None:
        return None


class RedisState:
    def __init__(self, url: str, timeout_s: float):
        self._client = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                               retry_on_timeout=False, health_check_interval=30)

    async def revision(self) -> int:
        try:
            return int(await self._client.get(REVISION_KEY) or 0)
        except (RedisError, OSError) as err:
            raise unavailable("the read") from err

    async def documents(self, kind: str) -> dict[str, dict]:
        try:
            raw = await self._client.hgetall(STATE_PREFIX + kind)
        except (RedisError, OSError) as err:
            raise unavailable("the read") from err
        return {name.decode("utf-8"): json.loads(value) for name, value in raw.items()}

    async def update(self, kind: str, name: str, change: Change) -> dict:
        key = STATE_PREFIX + kind
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                for _ in range(_UPDATE_ATTEMPTS):
                    try:
                        await pipe.watch(key)
                        raw = await pipe.hget(key, name)
                        new = change(json.loads(raw) if raw else None)
                        pipe.multi()
                        pipe.hset(key, name, json.dumps(new, ensure_ascii=False))
                        pipe.incr(REVISION_KEY)
                        await pipe.execute()
                        return new
                    except WatchError:
                        continue
                    finally:
                        await pipe.reset()
        except (RedisError, OSError) as err:
            raise unavailable("the change") from err
        raise Unavailable("the shared state changed too often to apply this change; retry",
                          reason="STATE_CONTENDED", retry_after_s=0.5)

    async def close(self) -> None:
        await self._client.aclose()


class StateSync:
    """Keeps this replica's copy current: loads every kind now, then whenever the revision moves."""

    def __init__(self, state: SharedState, interval_s: float,
                 subscribers: Mapping[str, Callable[[dict[str, dict]], None]]):
        self._state = state
        self._interval_s = interval_s
        self._subscribers = dict(subscribers)
        self._seen: int | None = None
        self._task: asyncio.Task | None = None
        self._failing = False

    async def refresh(self) -> None:
        """Loads the documents if the revision moved since the last load; keeps the copy on errors."""
        try:
            revision = await self._state.revision()
            if revision == self._seen:
                return
            loaded = {kind: await self._state.documents(kind) for kind in self._subscribers}
        except Unavailable:
            if not self._failing:
                log.warning("shared state unreachable; serving the last rollouts and templates read")
            self._failing = True
            return
        if self._failing:
            log.info("shared state reachable again")
        self._failing = False
        self._seen = revision
        for kind, documents in loaded.items():
            self._subscribers[kind](documents)

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name="state-sync")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("applying shared state failed; retrying at the next poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
