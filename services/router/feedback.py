"""Feedback on answers: counted per tenant, model variant and template version, exported as metrics.

finish writes a short-lived record of every answer (request log): which tenant got
it, from which model, variant and template. It is keyed by a hash of tenant and
request id, so feedback finds only the caller's own tenant's answers: another
tenant's request id reads as unknown (NOT_FOUND), which also keeps whether it
exists to itself. One feedback per answer (ALREADY_EXISTS after that), kept with
its comment for the same window; the comment is never logged or exported.
"""

import hashlib
import json
import logging
import math
import time

from llmsuite.inference.v1 import inference_pb2

from services.common.context import tenant_var
from services.common.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from services.router.metrics import BUDGET_ERRORS, FEEDBACK, FEEDBACK_RATING, TASK_COMPLETION
from services.router.stores import Store, StoreError
from services.router.usage import UsageRecord

log = logging.getLogger(__name__)

REQUEST_PREFIX = "llmsuite:router:request:"
FEEDBACK_PREFIX = "llmsuite:router:feedback:"
MAX_COMMENT_CHARS = 2000
MAX_REQUEST_ID_CHARS = 128


def _digest(tenant: str, request_id: str) -> str:
    return hashlib.sha256(f"{tenant}\x00{request_id}".encode("utf-8")).hexdigest()


def rating_of(request: inference_pb2.FeedbackRequest) -> float:
    """The score on the -1..1 scale (stars 1..5 map to -1, -0.5, 0, 0.5, 1); INVALID_ARGUMENT when out of range."""
    which = request.WhichOneof("score")
    if which == "rating":
        if not math.isfinite(request.rating) or not -1 <= request.rating <= 1:
            raise InvalidArgument("rating must be between -1 and 1", field="rating")
        return request.rating
    if which == "stars":
        if not 1 <= request.stars <= 5:
            raise InvalidArgument("stars must be between 1 and 5", field="stars")
        return (request.stars - 3) / 2
    raise InvalidArgument("set a score: rating (-1 to 1) or stars (1 to 5)", field="rating")


def _rating_label(rating: float) -> str:
    return "positive" if rating > 0 else "negative" if rating < 0 else "neutral"


class RequestLog:
    """Which tenant received which answer, for `window_s` after it."""

    def __init__(self, store: Store, window_s: float):
        self._store = store
        self.window_s = window_s

    async def remember(self, record: UsageRecord) -> None:
        entry = {"model": record.model, "variant": record.variant, "template": record.template,
                 "template_version": record.template_version, "at": record.at}
        try:
            await self._store.set(REQUEST_PREFIX + _digest(record.tenant, record.request_id),
                                  json.dumps(entry).encode(), self.window_s)
        except StoreError as err:
            BUDGET_ERRORS.labels("request_log").inc()
            log.warning("request record not kept (no feedback possible for it): %s", err)

    async def lookup(self, tenant: str, request_id: str) -> dict | None:
        raw = await self._store.get(REQUEST_PREFIX + _digest(tenant, request_id))
        return json.loads(raw) if raw else None


class Feedback:
    def __init__(self, requests: RequestLog, store: Store):
        self._requests = requests
        self._store = store

    async def submit(self, request: inference_pb2.FeedbackRequest) -> inference_pb2.FeedbackResponse:
        request_id = request.request_id
        if not request_id or len(request_id) > MAX_REQUEST_ID_CHARS or not request_id.isprintable():
            raise InvalidArgument(f"request_id must be 1 to {MAX_REQUEST_ID_CHARS} printable characters",
                                  field="request_id")
        rating = rating_of(request)
        if len(request.comment) > MAX_COMMENT_CHARS:
            raise InvalidArgument(f"comment is too long (at most {MAX_COMMENT_CHARS} characters)", field="comment")
        tenant = tenant_var.get()
        try:
            answered = await self._requests.lookup(tenant, request_id)
            if answered is None:
                raise NotFound(f"no answer with request id {request_id!r} was sent to this tenant in the last "
                               f"{self._requests.window_s:.0f} s", reason="REQUEST_NOT_FOUND")
            entry = {"rating": rating, "task_completed": request.task_completed if request.HasField(
                "task_completed") else None, "comment": request.comment, "at": time.time()}
            first = await self._store.set_new(FEEDBACK_PREFIX + _digest(tenant, request_id),
                                              json.dumps(entry, ensure_ascii=False).encode(), self._requests.window_s)
        except StoreError as err:
            log.warning("feedback cannot be recorded: %s", err)
            raise Unavailable("feedback cannot be recorded right now; retry shortly", reason="FEEDBACK_UNAVAILABLE",
                              retry_after_s=1.0) from None
        if not first:
            raise AlreadyExists(f"feedback for request id {request_id!r} was already given",
                                reason="FEEDBACK_EXISTS")
        labels = (tenant, answered["variant"], f"{answered['template']}@{answered['template_version']}")
        FEEDBACK.labels(*labels, _rating_label(rating)).inc()
        FEEDBACK_RATING.labels(*labels).observe(rating)
        if request.HasField("task_completed"):
            TASK_COMPLETION.labels(*labels, str(request.task_completed).lower()).inc()
        return inference_pb2.FeedbackResponse(rating=rating)
