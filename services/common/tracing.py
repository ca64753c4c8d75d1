"""OpenTelemetry traces, exported by OTLP/gRPC only when an endpoint is configured (section `tracing`).

Off (no `otlp_endpoint`, the default), no tracer provider, exporter or interceptor is
created: `span()` hands back one shared no-op context manager and the OpenTelemetry
API stays the no-op it is out of the box (the cost is measured by evals/tracing_cost.py).

On, every process sends its spans in batches to the collector. The edge (Envoy)
decides which requests are traced: a process starts no trace of its own (the root
sampler is off), it continues the one whose W3C `traceparent` arrives with a call, as
sampled as the edge said, and passes it on with every call it makes. So one request
is one trace, rooted at Envoy's span, and health checks and warm-ups make none.

Spans carry names, sizes, models, tokens, verdicts and the tenant (`llmsuite.tenant`),
never prompt or answer text, and a failure is recorded by its exception type only:
exception messages may quote what a caller sent.
"""

import asyncio
import re
from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager, Iterator, Mapping

import grpc
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Setter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from pydantic import Field, field_validator

from services.common.config import Settings
from services.common.context import tenant_var

SECTION = "tracing"
TENANT_ATTRIBUTE = "llmsuite.tenant"

# OpenTelemetry's GenAI semantic conventions, on the spans of a model's answer.
GENAI_OPERATION = "gen_ai.operation.name"
GENAI_REQUEST_MODEL = "gen_ai.request.model"
GENAI_MAX_TOKENS = "gen_ai.request.max_tokens"
GENAI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GENAI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GENAI_FINISH_REASONS = "gen_ai.response.finish_reasons"

# gRPC services whose calls are not worth a span: probes and tooling, never part of a request.
_UNTRACED_SERVICES = ("grpc.health.v1.", "grpc.reflection.")

_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


class TracingSettings(Settings):
    """Read by every process (and by the stack, for Envoy and Triton) from the `tracing` section."""

    otlp_endpoint: str = Field(
        "", description="OTLP/gRPC collector (host:port, e.g. 127.0.0.1:4317, Jaeger's or an OpenTelemetry "
                        "Collector's OTLP port) that Envoy and every service send spans to; empty: no tracing at "
                        "all.")
    otlp_http_url: str = Field(
        "", description="OTLP/HTTP traces URL for Triton, which exports only over HTTP (e.g. "
                        "http://127.0.0.1:4318/v1/traces); empty: Triton makes no spans and generation's call "
                        "to it is the trace's leaf. Used only with otlp_endpoint.")
    sample_percent: float = Field(
        100.0, ge=0, le=100, description="Share of requests the edge traces; every service follows the edge's "
                                         "decision.")

    @field_validator("otlp_endpoint")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value and not _HOST_PORT.match(value):
            raise ValueError(f"must be host:port of an OTLP/gRPC collector (no scheme), got {value!r}")
        return value

    @field_validator("otlp_http_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s):// URL such as http://127.0.0.1:4318/v1/traces, got {value!r}")
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.otlp_endpoint)


# The process's provider once configure() turned tracing on; None: tracing is off.
_provider = None
_tracer: trace.Tracer = trace.NoOpTracer()
_OFF = nullcontext(trace.INVALID_SPAN)


def configure(service: str, settings: TracingSettings) -> bool:
    """Turns tracing on for this process when an endpoint is configured; returns whether it did."""
    global _provider, _tracer
    if not settings.enabled:
        return False
    # Imported only here: a process without tracing never loads the SDK.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

    provider = TracerProvider(resource=Resource.create({"service.name": service}),
                              sampler=ParentBased(root=ALWAYS_OFF))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=True)))
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("llmsuite")
    return True


def enabled() -> bool:
    return _provider is not None


def shutdown() -> None:
    """Exports the spans still queued; the process is stopping."""
    if _provider is not None:
        _provider.shutdown()


def span(name: str, attributes: Mapping[str, Any] | None = None,
         kind: SpanKind = SpanKind.INTERNAL) -> ContextManager[Span]:
    """A span around a stage, current inside the block, with the request's tenant; tracing off: a no-op."""
    if _provider is None:
        return _OFF
    return _recording(name, attributes, kind)


def incoming(name: str, headers: Mapping[str, str], attributes: Mapping[str, Any] | None = None) -> ContextManager[Span]:
    """The server span of an HTTP request, continuing the trace whose `traceparent` came in
    `headers` (the gRPC servers have interceptors for this); tracing off: a no-op."""
    if _provider is None:
        return _OFF
    return _recording(name, attributes, SpanKind.SERVER, propagate.extract(headers))


@contextmanager
def _recording(name: str, attributes: Mapping[str, Any] | None, kind: SpanKind,
               parent: Context | None = None) -> Iterator[Span]:
    with _tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes,
                                       record_exception=False, set_status_on_exception=False) as current:
        if current.is_recording() and tenant_var.get():
            current.set_attribute(TENANT_ATTRIBUTE, tenant_var.get())
        try:
            yield current
        except GeneratorExit:
            # A stream its consumer closed early: not a failure.
            raise
        except BaseException as err:
            current.set_status(Status(StatusCode.ERROR, type(err).__name__))
            raise


def chat(model: str, max_tokens: int) -> dict[str, Any]:
    """The GenAI attributes of a chat completion asked of `model`."""
    return {GENAI_OPERATION: "chat", GENAI_REQUEST_MODEL: model, GENAI_MAX_TOKENS: max_tokens}


def record_usage(current: Span, input_tokens: int, output_tokens: int, finish_reason: str) -> None:
    """The GenAI usage of a finished answer, on its span; `finish_reason` as the protos name it
    (FINISH_REASON_STOP), written as the conventions do (stop)."""
    current.set_attributes({GENAI_INPUT_TOKENS: input_tokens, GENAI_OUTPUT_TOKENS: output_tokens,
                            GENAI_FINISH_REASONS: (finish_reason.removeprefix("FINISH_REASON_").lower(),)})


def inject(headers: dict[str, str]) -> None:
    """Adds the current span's `traceparent` to `headers` (for a client the interceptors do not cover),
    only when the span is recorded: Triton traces every request that carries one."""
    if _provider is not None and trace.get_current_span().is_recording():
        propagate.inject(headers)


def _traced_call(details) -> bool:
    method = details.method.decode() if isinstance(details.method, bytes) else details.method
    return not method.lstrip("/").startswith(_UNTRACED_SERVICES)


def server_interceptors() -> list:
    """A server span per call, continuing the caller's trace (tracing off: none)."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=_provider, filter_=_traced_call)]


def client_interceptors() -> list:
    """A client span per call, whose context goes out as `traceparent` (tracing off: none)."""
    if _provider is None:
        return []
    # A channel takes each interceptor for one kind of call only.
    return [_UnaryUnarySpans(), _UnaryStreamSpans(), _StreamUnarySpans(), _StreamStreamSpans()]


class _ClientSpans:
    """A client span per call, ended when the call ends, however it ends.

    Not opentelemetry-instrumentation-grpc's client interceptors: they end a stream's span
    only when its response iterator is exhausted, and the suite's clients cancel a stream
    once its final message arrived, so those spans never ended (nor were exported). Here
    the call itself is handed back, and its done callback ends the span.
    """

    async def _traced(self, continuation, details: grpc.aio.ClientCallDetails, request):
        if not _traced_call(details):
            return await continuation(details, request)
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        service, _, name = method.lstrip("/").rpartition("/")
        current = _tracer.start_span(method, kind=SpanKind.CLIENT,
                                     attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name})
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        propagate.inject(metadata, context=trace.set_span_in_context(current), setter=_METADATA)
        try:
            call = await continuation(details._replace(metadata=metadata), request)
        except BaseException as err:
            current.set_status(Status(StatusCode.ERROR, type(err).__name__))
            current.end()
            raise
        call.add_done_callback(lambda done: _ending.add(asyncio.ensure_future(_end(current, done))))
        return call


class _UnaryUnarySpans(_ClientSpans, grpc.aio.UnaryUnaryClientInterceptor):
    intercept_unary_unary = _ClientSpans._traced


class _UnaryStreamSpans(_ClientSpans, grpc.aio.UnaryStreamClientInterceptor):
    intercept_unary_stream = _ClientSpans._traced


class _StreamUnarySpans(_ClientSpans, grpc.aio.StreamUnaryClientInterceptor):
    intercept_stream_unary = _ClientSpans._traced


class _StreamStreamSpans(_ClientSpans, grpc.aio.StreamStreamClientInterceptor):
    intercept_stream_stream = _ClientSpans._traced


class _MetadataSetter(Setter):
    def set(self, carrier: grpc.aio.Metadata, key: str, value: str) -> None:
        carrier.add(key, value)


_METADATA = _MetadataSetter()
# Spans waiting for their call's status (held so the tasks are not collected early).
_ending: set[asyncio.Future] = set()


async def _end(current: Span, call) -> None:
    try:
        # code() is a coroutine even on a finished call.
        code = await call.code()
        current.set_attribute("rpc.grpc.status_code", code.value[0])
        # CANCELLED is this side's own doing: the suite's clients cancel a stream once
        # they have its final message, or when their own caller left.
        if code not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
            current.set_status(Status(StatusCode.ERROR, code.name))
    finally:
        current.end()
        _ending.discard(asyncio.current_task())
