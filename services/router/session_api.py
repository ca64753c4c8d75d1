"""GetSession, DeleteSession and ListSessions: a tenant's sessions (sessions.py) and what they cached.

Sessions are per tenant: another tenant's session id reads as unknown (NOT_FOUND).
DeleteSession removes the turns, the listing entry and every cached answer the
session's turns wrote, so a later request cannot get one of them back.
"""

import logging

from llmsuite.inference.v1 import inference_pb2

from services.common.context import tenant_var
from services.common.errors import InvalidArgument, NotFound, Unavailable
from services.router.cache import ResponseCache
from services.router.config import RouterSettings
from services.router.sessions import SessionStore
from services.router.stores import StoreError
from services.router.timestamps import timestamp

log = logging.getLogger(__name__)

_ROLES = {"system": inference_pb2.ROLE_SYSTEM, "user": inference_pb2.ROLE_USER,
          "assistant": inference_pb2.ROLE_ASSISTANT}
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def _unavailable(err: StoreError) -> Unavailable:
    log.warning("session store unavailable: %s", err)
    return Unavailable("sessions cannot be reached right now; retry shortly", reason="SESSIONS_UNAVAILABLE",
                       retry_after_s=1.0)


class SessionApi:
    def __init__(self, settings: RouterSettings, sessions: SessionStore, cache: ResponseCache):
        self._settings = settings
        self._sessions = sessions
        self._cache = cache

    def _session_id(self, session_id: str) -> str:
        limit = self._settings.max_session_id_chars
        if not session_id or len(session_id) > limit or not session_id.isprintable():
            raise InvalidArgument(f"session_id must be 1 to {limit} printable characters", field="session_id")
        return session_id

    async def get(self, request: inference_pb2.GetSessionRequest) -> inference_pb2.GetSessionResponse:
        session_id = self._session_id(request.session_id)
        try:
            stored = await self._sessions.get(tenant_var.get(), session_id)
        except StoreError as err:
            raise _unavailable(err) from None
        if stored is None:
            raise NotFound(f"no session {session_id!r}", reason="SESSION_NOT_FOUND")
        return inference_pb2.GetSessionResponse(session=inference_pb2.Session(
            session_id=session_id,
            turns=[inference_pb2.Message(role=_ROLES[turn.role], content=turn.content) for turn in stored.turns],
            updated_at=timestamp(stored.updated_at),
            expires_at=timestamp(stored.updated_at + self._sessions.ttl_s)))

    async def delete(self, request: inference_pb2.DeleteSessionRequest) -> inference_pb2.DeleteSessionResponse:
        session_id = self._session_id(request.session_id)
        try:
            cache_keys = await self._sessions.delete(tenant_var.get(), session_id)
            if cache_keys is None:
                raise NotFound(f"no session {session_id!r}", reason="SESSION_NOT_FOUND")
            removed = await self._cache.drop(cache_keys)
        except StoreError as err:
            raise _unavailable(err) from None
        log.info("session deleted", extra={"cached_answers_deleted": removed})
        return inference_pb2.DeleteSessionResponse(cached_answers_deleted=removed)

    async def list(self, request: inference_pb2.ListSessionsRequest) -> inference_pb2.ListSessionsResponse:
        size = request.page_size or DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be 1 to {MAX_PAGE_SIZE}", field="page_size")
        token = request.page_token
        if token and not (token.isdigit() and len(token) <= 9):
            raise InvalidArgument("page_token must be a next_page_token from ListSessions", field="page_token")
        offset = int(token or 0)
        try:
            # One more than the page: whether a next page exists.
            page = await self._sessions.page(tenant_var.get(), offset, size + 1)
        except StoreError as err:
            raise _unavailable(err) from None
        return inference_pb2.ListSessionsResponse(
            sessions=[inference_pb2.SessionSummary(session_id=session_id, updated_at=timestamp(updated))
                      for session_id, updated in page[:size]],
            next_page_token=str(offset + size) if len(page) > size else "")
