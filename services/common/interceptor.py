"""The one server interceptor: request context, metrics, error mapping.

For every RPC it binds the request id and tenant from metadata, echoes the request
id in the response headers (or, for a call that fails before its first message, in
the trailers), counts and times the call after the handler finished,
decodes the request itself (so malformed bytes become INVALID_ARGUMENT rather than
gRPC's generic INTERNAL) and maps exceptions to status codes. Unknown exceptions
become INTERNAL with a generic message; their text goes to the log only.

A server stream that fails after its first message, called through Envoy's JSON
transcoder, also gets one last message carrying the error in its `error` field (when
the response type has one): the transcoder drops a late status, so without it a
Server-Sent Events caller would see the stream simply stop.
"""

import asyncio
import functools
import logging
import time
from typing import Any, AsyncIterator, Callable, Sequence

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2

from services.common import context as ctx
from services.common.errors import InvalidArgument, PermissionDenied, ServiceError
from services.common.metrics import RPC_IN_FLIGHT, RPC_LATENCY, RPC_REQUESTS
from services.common.tls import peer_name

log = logging.getLogger(__name__)

# Envoy's JSON transcoder sets this on the requests it made from HTTP/JSON ones; the
# edge strips any copy a client sent.
TRANSCODED_HEADER = "x-envoy-original-path"


def _decoder(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        if deserializer is None:
            return raw
        try:
            return deserializer(raw)
        except (DecodeError, ValueError, TypeError) as err:
            raise InvalidArgument("request message could not be decoded; check that it matches the service's proto") from err
    return decode


@functools.cache
def error_message_factory(method_path: str) -> Callable[[status_pb2.Status], Any] | None:
    """For a server-streaming method whose response has an `error` field shaped like
    google.rpc.Status (same field numbers): a function making that last message."""
    service, _, method = method_path.lstrip("/").rpartition("/")
    try:
        output = descriptor_pool.Default().FindServiceByName(service).FindMethodByName(method).output_type
    except KeyError:
        return None
    if "error" not in output.fields_by_name:
        return None
    response_class = message_factory.GetMessageClass(output)

    def make(status: status_pb2.Status) -> Any:
        response = response_class()
        response.error.ParseFromString(status.SerializeToString())
        return response
    return make


def _transcoded(context: grpc.aio.ServicerContext) -> bool:
    return any(key == TRANSCODED_HEADER for key, _ in context.invocation_metadata() or ())


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service: str, default_tenant: str, allowed_clients: Sequence[str] = ()):
        self._service = service
        self._default_tenant = default_tenant
        # Common names of the client certificates that may call (mutual TLS); empty: any.
        self._allowed_clients = frozenset(allowed_clients)

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
        error_message = error_message_factory(handler_call_details.method)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, decode, request_streaming=False,
                                  error_message=error_message),
                response_serializer=serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method, decode, request_streaming=True),
                response_serializer=serializer)
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(handler.stream_stream, method, decode, request_streaming=True,
                              error_message=error_message),
            response_serializer=serializer)

    async def _begin(self, context: grpc.aio.ServicerContext) -> None:
        ctx.bind_from_metadata(context.invocation_metadata(), self._default_tenant)
        if self._allowed_clients:
            caller = peer_name(context)
            if caller not in self._allowed_clients:
                log.warning("refused a call from %s", caller or "a caller without a certificate")
                raise PermissionDenied(f"'{caller}' may not call {self._service}; the edge calls it",
                                       reason="CALLER_NOT_ALLOWED")

    @staticmethod
    async def _send_headers(context: grpc.aio.ServicerContext) -> None:
        # Headers go out with the first message, not before: a call that fails
        # earlier then ends as a trailers-only response, which lets the edge's
        # HTTP/JSON API answer with the error's HTTP status instead of a 200
        # that was committed before anything was known.
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
                response = await behavior(request, context)
                try:
                    await self._send_headers(context)
                except Exception:
                    # Only a call that is over refuses its headers: the caller left
                    # while its answer was being made, so nobody reads it any more.
                    raise asyncio.CancelledError from None
                return response
            except BaseException as err:
                await outcome.fail(err, context)
            finally:
                outcome.record(context)
        return handle

    def _wrap_stream(self, behavior, method: str, decode, request_streaming: bool, error_message):
        async def handle(raw_request, context: grpc.aio.ServicerContext):
            outcome = _Outcome(self._service, method)
            started = False
            try:
                await self._begin(context)
                request = self._decoded_stream(raw_request, decode) if request_streaming else decode(raw_request)
                async for response in behavior(request, context):
                    if not started:
                        await self._send_headers(context)
                        started = True
                    yield response
            except BaseException as err:
                status = outcome.status_of(err, context)
                if started and status is not None and error_message is not None and _transcoded(context):
                    yield error_message(status)
                await outcome.fail(err, context)
            finally:
                outcome.record(context)
        return handle


# How a call the client cancelled reaches its handler: CancelledError where the handler
# awaited something, GeneratorExit where a stream waited at a `yield` for its message to
# go out (gRPC then closes the generator). Neither is an error of ours.
_CANCELLED = (asyncio.CancelledError, GeneratorExit)


def _internal_message() -> str:
    return f"internal error (request id {ctx.request_id_var.get()}); it has been logged"


class _Outcome:
    """Tracks one call: in-flight gauge, then code and latency once it ends."""

    def __init__(self, service: str, method: str):
        self.service, self.method = service, method
        self.code = grpc.StatusCode.OK
        self.start = time.perf_counter()
        RPC_IN_FLIGHT.labels(service, method).inc()

    @staticmethod
    def status_of(err: BaseException, context: grpc.aio.ServicerContext) -> status_pb2.Status | None:
        """The status the caller gets for `err`; None when the call was cancelled."""
        if isinstance(err, ServiceError):
            return err.to_rpc_status()
        if isinstance(err, _CANCELLED):
            return None
        if isinstance(err, grpc.aio.AbortError):
            code = context.code() or grpc.StatusCode.UNKNOWN
            return status_pb2.Status(code=code.value[0], message=context.details() or "")
        return status_pb2.Status(code=code_pb2.INTERNAL, message=_internal_message())

    async def fail(self, err: BaseException, context: grpc.aio.ServicerContext) -> None:
        request_id = ((ctx.REQUEST_ID_HEADER, ctx.request_id_var.get()),)
        if isinstance(err, ServiceError):
            self.code = err.code
            status = err.to_status()
            await context.abort(status.code, status.details, (*status.trailing_metadata, *request_id))
        if isinstance(err, _CANCELLED):
            self.code = grpc.StatusCode.CANCELLED
            raise err
        if isinstance(err, grpc.aio.AbortError):
            # The handler aborted on purpose with its own status.
            self.code = context.code() or grpc.StatusCode.UNKNOWN
            raise err
        self.code = grpc.StatusCode.INTERNAL
        log.error("unhandled error in %s", self.method, exc_info=err)
        await context.abort(grpc.StatusCode.INTERNAL, _internal_message(), request_id)

    def record(self, context: grpc.aio.ServicerContext) -> None:
        RPC_IN_FLIGHT.labels(self.service, self.method).dec()
        code = getattr(self.code, "name", str(self.code))
        RPC_REQUESTS.labels(self.service, self.method, code).inc()
        RPC_LATENCY.labels(self.service, self.method, code).observe(time.perf_counter() - self.start)
