"""The suite's exception hierarchy and its mapping to gRPC status with rich details.

Handlers raise these; the server interceptor turns them into a status whose message
and details a caller can act on. Any other exception becomes INTERNAL with a generic
message, and its text stays in the server log.
"""

from dataclasses import dataclass
from typing import Sequence

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "llmsuite"


@dataclass(frozen=True)
class QuotaViolation:
    """One limit a request ran into, for a QuotaFailure detail."""

    # What the quota is counted for, for example "tenant:acme".
    subject: str
    # Which limit, in words a caller can act on.
    description: str


class ServiceError(Exception):
    """An error whose message is safe to show to the caller."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, reason: str = "", metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        # ErrorInfo.reason: a stable UPPER_SNAKE identifier callers can branch on.
        self.reason = reason
        self.metadata = metadata or {}

    def details(self) -> list:
        if not self.reason:
            return []
        return [error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata)]

    def to_rpc_status(self) -> status_pb2.Status:
        status = status_pb2.Status(code=_RPC_CODES[self.code], message=self.message)
        for detail in self.details():
            status.details.add().Pack(detail)
        return status

    def to_status(self) -> grpc.Status:
        return rpc_status.to_status(self.to_rpc_status())


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, *, field: str = "", reason: str = "INVALID_ARGUMENT", **kwargs):
        super().__init__(message, reason=reason, **kwargs)
        self.field = field

    def details(self) -> list:
        details = super().details()
        if self.field:
            violation = error_details_pb2.BadRequest.FieldViolation(field=self.field, description=self.message)
            details.append(error_details_pb2.BadRequest(field_violations=[violation]))
        return details


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class _RetryableError(ServiceError):
    def __init__(self, message: str, *, retry_after_s: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after_s = retry_after_s

    def details(self) -> list:
        details = super().details()
        if self.retry_after_s is not None:
            delay = duration_pb2.Duration()
            delay.FromMilliseconds(int(self.retry_after_s * 1000))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        return details


class ResourceExhausted(_RetryableError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, quota_violations: Sequence[QuotaViolation] = (), **kwargs):
        super().__init__(message, **kwargs)
        self.quota_violations = tuple(quota_violations)

    def details(self) -> list:
        details = super().details()
        if self.quota_violations:
            details.append(error_details_pb2.QuotaFailure(violations=[
                error_details_pb2.QuotaFailure.Violation(subject=v.subject, description=v.description)
                for v in self.quota_violations]))
        return details


class Unavailable(_RetryableError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ServiceError):
    code = grpc.StatusCode.CANCELLED


_RPC_CODES = {code: getattr(code_pb2, code.name) for code in grpc.StatusCode}


def from_rpc_error(err: grpc.aio.AioRpcError, upstream: str) -> ServiceError:
    """Maps an upstream call's failure to an error for our own caller.

    Client errors (bad argument, not found, ...) pass through with their message,
    since that message came from a suite service and is meant for callers.
    Anything else names the upstream without its internal text.
    """
    code = err.code()
    passthrough = {
        grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
        grpc.StatusCode.NOT_FOUND: NotFound,
        grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
        grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
        grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
        grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    }
    if code in passthrough:
        return passthrough[code](err.details() or f"{upstream} rejected the request")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"{upstream} did not answer within the deadline")
    if code == grpc.StatusCode.CANCELLED:
        return Cancelled("request cancelled")
    return Unavailable(f"{upstream} is unavailable", reason="UPSTREAM_UNAVAILABLE",
                       metadata={"upstream": upstream}, retry_after_s=1.0)
