"""Conversation history per tenant and session id, in Redis or in process.

A session holds the turns the model actually saw (user text after input
guardrails, so redacted items stay redacted) and the answers the caller actually
received (after output guardrails). It is bounded by turn count and expires
`session_ttl_s` after its last turn. The key is a hash of tenant and session id,
so one tenant can never read another's session, whatever id it sends.
"""

import hashlib
import json
import logging

from services.router.metrics import CACHE_ERRORS
from services.router.stores import Store, StoreError
from services.router.validation import Turn

log = logging.getLogger(__name__)

SESSION_PREFIX = "llmsuite:router:session:"


def session_key(tenant: str, session_id: str) -> str:
    digest = hashlib.sha256(f"{tenant}\x00{session_id}".encode("utf-8")).hexdigest()
    return SESSION_PREFIX + digest


class SessionStore:
    def __init__(self, store: Store, max_turns: int, ttl_s: float):
        self._store = store
        self._max_turns = max_turns
        self._ttl_s = ttl_s

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

    async def append(self, tenant: str, session_id: str, turns: list[Turn]) -> None:
        items = [json.dumps({"role": t.role, "content": t.content}, ensure_ascii=False).encode("utf-8") for t in turns]
        try:
            await self._store.push(session_key(tenant, session_id), items, self._max_turns, self._ttl_s)
        except StoreError as err:
            CACHE_ERRORS.labels("session_put").inc()
            log.warning("session write skipped: %s", err)
