"""The one server interceptor: request context, metrics, error mapping.

For every RPC it binds the request id and tenant from metadata, echoes the request
id in the response headers, counts and times the call after the handler finished,
decodes the request itself (so malformed bytes become INVALID_ARGUMENT rather than
gRPC's generic INTERNAL) and maps exceptions to status codes. Unknown exceptions
become INTERNAL with a generic message; their text goes to the log only.
"""

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Callable

import grpc
from google.protobuf.message import DecodeError

from services.common import context as ctx
from services.common.errors import InvalidArgument, ServiceError
from services.common.metrics import RPC_IN_FLIGHT, RPC_LATENCY, RPC_REQUESTS

log = logging.getLogger(__name__)


def _decoder(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        if deserializer is None:
            return raw
        try:
            return deserializer(raw)
        except (DecodeError, ValueError, TypeError) as err:
            raise InvalidArgument("request message could not be decoded; check that it matches the service's proto") from err
    return decode


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service: str, default_tenant: str):
        self._service = service
        self._default_tenant = default_tenant

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        decode = _decoder(handler.request_deserializer)
        serializer = handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, decode), response_serializer=serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, decode, request_streaming=False),
                response_serializer=serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method, decode, request_streaming=True),
                response_serializer=serializer)
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(handler.stream_stream, method, decode, request_streaming=True),
            response_serializer=serializer)

    async def _begin(self, context: grpc.aio.ServicerContext) -> None:
        ctx.bind_from_metadata(context.invocation_metadata(), self._default_tenant)
        await context.send_initial_metadata(((ctx.REQUEST_ID_HEADER, ctx.request_id_var.get()),))

    @staticmethod
    async def _decoded_stream(raw_requests: AsyncIterator[bytes], decode) -> AsyncIterator[Any]:
        async for raw in raw_requests:
            yield decode(raw)

    def _wrap_unary(self, behavior, method: str, decode, request_streaming: bool = False):
        async def handle(raw_request, context: grpc.aio.ServicerContext):
            outcome = _Outcome(self._service, method)
            try:
                await self._begin(context)
                request = self._decoded_stream(raw_request, decode) if request_streaming else decode(raw_request)
                return await behavior(request, context)
            except BaseException as err:
                await outcome.fail(err, context)
            finally:
                outcome.record(context)
        return handle

    def _wrap_stream(self, behavior, method: str, decode, request_streaming: bool):
        async def handle(raw_request, context: grpc.aio.ServicerContext):
            outcome = _Outcome(self._service, method)
            try:
                await self._begin(context)
                request = self._decoded_stream(raw_request, decode) if request_streaming else decode(raw_request)
                async for response in behavior(request, context):
                    yield response
            except BaseException as err:
                await outcome.fail(err, context)
            finally:
                outcome.record(context)
        return handle


class _Outcome:
    """Tracks one call: in-flight gauge, then code and latency once it ends."""

    def __init__(self, service: str, method: str):
        self.service, self.method = service, method
        self.code = grpc.StatusCode.OK
        self.start = time.perf_counter()
        RPC_IN_FLIGHT.labels(service, method).inc()

    async def fail(self, err: BaseException, context: grpc.aio.ServicerContext) -> None:
        if isinstance(err, ServiceError):
            self.code = err.code
            status = err.to_status()
            await context.abort(status.code, status.details, status.trailing_metadata)
        if isinstance(err, asyncio.CancelledError):
            self.code = grpc.StatusCode.CANCELLED
            raise err
        if isinstance(err, grpc.aio.AbortError):
            # The handler aborted on purpose with its own status.
            self.code = context.code() or grpc.StatusCode.UNKNOWN
            raise err
        self.code = grpc.StatusCode.INTERNAL
        log.error("unhandled error in %s", self.method, exc_info=err)
        await context.abort(grpc.StatusCode.INTERNAL,
                            f"internal error (request id {ctx.request_id_var.get()}); it has been logged")

    def record(self, context: grpc.aio.ServicerContext) -> None:
        RPC_IN_FLIGHT.labels(self.service, self.method).dec()
        code = getattr(self.code, "name", str(self.code))
        RPC_REQUESTS.labels(self.service, self.method, code).inc()
        RPC_LATENCY.labels(self.service, self.method, code).observe(time.perf_counter() - self.start)
