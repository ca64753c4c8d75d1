"""OpenAI's error shape, and the mapping of the suite's gRPC statuses onto it.

Every error this API answers is `{"error": {"message", "type", "param", "code"}}` with
the HTTP status OpenAI uses for the same situation, so the SDKs raise their typed
exceptions (BadRequestError, RateLimitError, ...). Envoy's own refusals on /v1/*
(401, 403, 429, 413, 503, 504) get the same shape from its local-reply mappers
(gateway/envoy.yaml.j2).
"""

import math
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

from services.common.errors import ERROR_DOMAIN

STATUS_DETAILS_KEY = "grpc-status-details-bin"

# gRPC code -> (HTTP status, OpenAI error type, code when the status names none).
_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", None),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error", None),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error", None),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error", "model_not_found"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error", "invalid_api_key"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error", None),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "rate_limit_exceeded"),
    grpc.StatusCode.UNAVAILABLE: (503, "server_error", "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "server_error", "timeout"),
}
# Codes whose message a suite service wrote for callers; others get ours, so that
# transport errors (addresses, RST_STREAM) never reach a caller.
_CLIENT_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE,
                 grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                 grpc.StatusCode.RESOURCE_EXHAUSTED}
# ErrorInfo reasons that have an OpenAI error code of their own.
_CODE_BY_REASON = {
    "INPUT_BLOCKED": "content_policy_violation",
    "PROMPT_TOO_LONG": "context_length_exceeded",
}


@dataclass
class ApiError(Exception):
    """An error answered in OpenAI's shape; `message` is safe to show to the caller."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    # Seconds, sent as Retry-After (429 and 503).
    retry_after_s: int | None = None

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after_s)} if self.retry_after_s is not None else {}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param)


def model_not_found(model: str) -> ApiError:
    return ApiError(404, f"The model '{model}' does not exist or this key may not use it; GET /v1/models lists "
                         "the models it may use.", "invalid_request_error", "model_not_found", "model")


def internal(request_id: str) -> ApiError:
    return ApiError(500, f"internal error (request id {request_id}); it has been logged", "server_error")


def openai_param(field: str) -> str:
    """The request field an OpenAI caller sent for a field the router names."""
    field = field.removeprefix("sampling.")
    if field.startswith("stop["):
        return "stop"
    if field in ("prompt", "tier"):
        return "messages" if field == "prompt" else "model"
    return field


def _status_of(err: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    for key, value in err.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def from_rpc_error(err: grpc.aio.AioRpcError, upstream: str) -> ApiError:
    """The OpenAI-shaped answer for a failed call to `upstream` (router or retrieval)."""
    code = err.code()
    status, kind, default_code = _BY_CODE.get(code, (500, "server_error", None))
    reason, param, retry_after = "", None, None
    details = _status_of(err)
    for any_detail in details.details if details else ():
        if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_detail.Unpack(info)
            if info.domain == ERROR_DOMAIN:
                reason = info.reason
        elif any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_detail.Unpack(bad)
            if bad.field_violations:
                param = openai_param(bad.field_violations[0].field)
        elif any_detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            any_detail.Unpack(retry)
            retry_after = max(1, math.ceil(retry.retry_delay.ToTimedelta().total_seconds()))
    if code in _CLIENT_CODES or reason:
        message = err.details() or f"{upstream} refused the request"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"the {upstream} did not answer within the deadline"
    elif code == grpc.StatusCode.UNAVAILABLE:
        message = f"the {upstream} is unavailable; retry later"
    else:
        message = f"the {upstream} failed to answer"
    if "BUDGET" in reason:
        openai_code = "insufficient_quota"
    else:
        openai_code = _CODE_BY_REASON.get(reason) or default_code or (reason.lower() or None)
    if status in (429, 503) and retry_after is None:
        retry_after = 1
    return ApiError(status, message, kind, openai_code, param, retry_after)
