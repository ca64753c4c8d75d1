"""A small OTLP trace receiver of the tests' own: what a collector would get from the suite.

It serves the collector's TraceService.Export over gRPC (what Envoy and the services
send) and POST /v1/traces over HTTP (OTLP/HTTP, protobuf or JSON bodies; Triton sends
JSON), on free loopback ports, in a thread with its own event loop, and keeps every
span it received.
"""

import asyncio
import base64
import threading
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

from services.stack.processes import free_port


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(item) for item in value.array_value.values)
    if kind == "kvlist_value":
        return {item.key: _value(item.value) for item in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def _ids_as_base64(body: Any) -> Any:
    """OTLP/JSON writes trace and span ids in hex; protobuf's JSON mapping reads bytes as base64."""
    if isinstance(body, list):
        return [_ids_as_base64(item) for item in body]
    if not isinstance(body, dict):
        return body
    return {key: base64.b64encode(bytes.fromhex(value)).decode()
            if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str) else _ids_as_base64(value)
            for key, value in body.items()}


def _attributes(pairs) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    # "" for a trace's root.
    parent_id: str
    attributes: dict[str, Any]
    # The attributes of the span's events (exceptions, Triton's timestamps).
    event_attributes: tuple[dict[str, Any], ...] = field(default=())


class OtlpReceiver:
    def __init__(self):
        self.grpc_port = free_port()
        self.http_port = free_port()
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="otlp-receiver", daemon=True)
        self._stop: asyncio.Event | None = None

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1/traces"

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def _keep(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            service = _attributes(resource_spans.resource.attributes).get("service.name", "")
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(ReceivedSpan(
                        service=service, name=span.name, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(), attributes=_attributes(span.attributes),
                        event_attributes=tuple(_attributes(event.attributes) for event in span.events)))
        with self._lock:
            self._spans.extend(received)

    async def _serve(self, started: threading.Event) -> None:
        receiver = self

        class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
            async def Export(self, request, context):
                receiver._keep(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        async def http_export(request: web.Request) -> web.Response:
            message = trace_service_pb2.ExportTraceServiceRequest()
            if request.content_type == "application/json":
                json_format.ParseDict(_ids_as_base64(await request.json()), message)
            else:
                message.ParseFromString(await request.read())
            receiver._keep(message)
            return web.Response(body=trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
                                content_type="application/x-protobuf")

        server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
        server.add_insecure_port(self.grpc_endpoint)
        await server.start()
        app = web.Application()
        app.router.add_post("/v1/traces", http_export)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.http_port).start()
        self._stop = asyncio.Event()
        started.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await server.stop(0)

    def __enter__(self) -> "OtlpReceiver":
        self._thread.start()
        started = threading.Event()
        self._serving = asyncio.run_coroutine_threadsafe(self._serve(started), self._loop)
        if not started.wait(10):
            raise RuntimeError("the OTLP receiver did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._serving.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
