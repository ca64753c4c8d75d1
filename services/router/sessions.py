"""Conversation history per tenant and session id, in Redis or in process.

A session holds the turns the model actually saw (user text after input
guardrails, so redacted items stay redacted) and the answers the caller actually
received (after output guardrails). It is bounded by turn count and expires
`session_ttl_s` after its last turn. The key is a hash of tenant and session id,
so one tenant can never read another's session, whatever id it sends.

Beside the turns, each tenant has an index of its sessions by last use (for
ListSessions), and each session the set of cache keys its turns wrote: DeleteSession
removes the turns, the index entry and those cached answers, so nothing the session
said stays behind. (Session turns write no semantic-cache vectors, see caching.py, so
the exact keys are all there is.)
"""

import hashlib
import json
import logging
import time
from dataclasses import dataclass

from services.router.metrics import CACHE_ERRORS
from services.router.stores import Store, StoreError
from services.router.validation import Turn

log = logging.getLogger(__name__)

SESSION_PREFIX = "llmsuite:router:session:"
SESSION_KEYS_PREFIX = "llmsuite:router:session-keys:"
SESSION_INDEX_PREFIX = "llmsuite:router:sessions:"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


def session_key(tenant: str, session_id: str) -> str:
    return SESSION_PREFIX + _digest(tenant, session_id)


def _keys_key(tenant: str, session_id: str) -> str:
    return SESSION_KEYS_PREFIX + _digest(tenant, session_id)


def _index_key(tenant: str) -> str:
    return SESSION_INDEX_PREFIX + _digest(tenant)


@dataclass(frozen=True)
class StoredSession:
    turns: tuple[Turn, ...]
    # Unix time of the last turn.
    updated_at: float


class SessionStore:
    def __init__(self, store: Store, max_turns: int, ttl_s: float, clock=time.time):
        self._store = store
        self._max_turns = max_turns
        self.ttl_s = ttl_s
        self._clock = clock

    async def history(self, tenant: str, session_id: str, last: int) -> tuple[Turn, ...]:
        """The last `last` turns, oldest first; empty when the store is unreachable."""
        if last <= 0:
            return ()
        try:
            raw = await self._store.items(session_key(tenant, session_id), last)
        except StoreError as err:
            CACHE_ERRORS.labels("session_get").inc()
            log.warning("session history skipped: %s", err)
            return ()
        turns = [Turn(**json.loads(item)) for item in raw]
        # A window must not start with an orphaned answer.
        while turns and turns[0].role != "user":
            turns.pop(0)
        return tuple(turns)

    async def append(self, tenant: str, session_id: str, turns: list[Turn], cache_key: str = "",
                     cache_ttl_s: float = 0.0) -> None:
        """Adds turns; `cache_key` is the cached answer they wrote, remembered for DeleteSession."""
        items = [json.dumps({"role": t.role, "content": t.content}, ensure_ascii=False).encode("utf-8") for t in turns]
        try:
            await self._store.push(session_key(tenant, session_id), items, self._max_turns, self.ttl_s)
            await self._store.index_put(_index_key(tenant), session_id, self._clock(), self.ttl_s)
            if cache_key:
                # Kept while either the session or the answer lives, so a delete always finds it.
                await self._store.members_add(_keys_key(tenant, session_id), cache_key,
                                              max(self.ttl_s, cache_ttl_s))
        except StoreError as err:
            CACHE_ERRORS.labels("session_put").inc()
            log.warning("session write skipped: %s", err)

    async def get(self, tenant: str, session_id: str) -> StoredSession | None:
        """The whole session, or None when the tenant has no such session; StoreError when unreachable."""
        raw = await self._store.items(session_key(tenant, session_id))
        if not raw:
            return None
        updated = await self._store.index_score(_index_key(tenant), session_id)
        return StoredSession(tuple(Turn(**json.loads(item)) for item in raw), updated or 0.0)

    async def page(self, tenant: str, offset: int, count: int) -> list[tuple[str, float]]:
        """(session id, last use) of live sessions, most recent first; StoreError when unreachable."""
        return await self._store.index_page(_index_key(tenant), self._clock() - self.ttl_s, offset, count)

    async def delete(self, tenant: str, session_id: str) -> list[str] | None:
        """Forgets the session; returns the cache keys its turns wrote, None when there was no such session."""
        keys_key = _keys_key(tenant, session_id)
        cache_keys = await self._store.members(keys_key)
        had_turns = await self._store.delete(session_key(tenant, session_id))
        listed = await self._store.index_remove(_index_key(tenant), session_id)
        await self._store.delete(keys_key)
        if not (had_turns or listed or cache_keys):
            return None
        return cache_keys
