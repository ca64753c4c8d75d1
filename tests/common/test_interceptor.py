"""The interceptor on a real in-process grpc.aio server.

The handlers here are small test servicers for the generation API: they exist to
raise each kind of error so the mapping to gRPC status can be checked.
"""

import asyncio
import logging

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from llmsuite.generation.v1 import generation_pb2, generation_pb2_grpc
from llmsuite.inference.v1 import inference_pb2
from prometheus_client import REGISTRY

from services.common import context
from services.common.config import ServerSettings
from services.common.errors import InvalidArgument, QuotaViolation, ResourceExhausted
from services.common.interceptor import ServerInterceptor, error_message_factory
from services.common.server import Service, build_server


class ErrorServicer(generation_pb2_grpc.GenerationServiceServicer):
    async def Generate(self, request, ctx):
        if request.model == "bad":
            raise InvalidArgument("max_tokens must be between 1 and 10", field="sampling.max_tokens")
        if request.model == "busy":
            raise ResourceExhausted("slow down", reason="RATE_LIMITED", retry_after_s=2.5)
        if request.model == "over-budget":
            raise ResourceExhausted("budget used up", reason="BUDGET_EXCEEDED", retry_after_s=30,
                                    quota_violations=[QuotaViolation("tenant:acme", "tokens_per_minute used up")])
        if request.model == "crash":
            raise RuntimeError("secret connection string postgres://admin:hunter2@db")
        return generation_pb2.GenerateResponse(text=f"{context.request_id_var.get()}|{context.tenant_var.get()}")

    async def GenerateStream(self, request, ctx):
        if request.model == "endless":
            # Until the client goes away: each yield waits on the client reading.
            while True:
                yield generation_pb2.GenerateStreamResponse(text_delta="a")
        if request.model == "complete":
            yield generation_pb2.GenerateStreamResponse(text_delta="a")
            yield generation_pb2.GenerateStreamResponse(final=generation_pb2.GenerateResponse(text="a"))
            return
        yield generation_pb2.GenerateStreamResponse(text_delta="a")
        raise InvalidArgument("stopped half way", field="prompt")


@pytest.fixture(scope="module")
async def server_port():
    settings = ServerSettings(default_tenant="dev")
    service = Service(name="itest", settings=settings, service_names=["llmsuite.generation.v1.GenerationService"],
                      register=lambda s: generation_pb2_grpc.add_GenerationServiceServicer_to_server(ErrorServicer(), s))
    server, port, _ = build_server(service)
    await server.start()
    yield port
    await server.stop(0)


@pytest.fixture
async def stub(server_port):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server_port}") as channel:
        yield generation_pb2_grpc.GenerationServiceStub(channel), channel


async def test_service_error_maps_to_code_with_details(stub):
    client, _ = stub
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.Generate(generation_pb2.GenerateRequest(model="bad"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_tokens must be between 1 and 10" in err.value.details()
    status = rpc_status.from_call(err.value)
    bad_request = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad_request) for d in status.details)
    assert bad_request.field_violations[0].field == "sampling.max_tokens"


async def test_resource_exhausted_carries_retry_info(stub):
    client, _ = stub
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.Generate(generation_pb2.GenerateRequest(model="busy"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in rpc_status.from_call(err.value).details)
    assert retry.retry_delay.ToMilliseconds() == 2500


async def test_resource_exhausted_carries_quota_failure(stub):
    client, _ = stub
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.Generate(generation_pb2.GenerateRequest(model="over-budget"))
    details = rpc_status.from_call(err.value).details
    quota, retry = error_details_pb2.QuotaFailure(), error_details_pb2.RetryInfo()
    assert any(d.Unpack(quota) for d in details) and any(d.Unpack(retry) for d in details)
    assert [(v.subject, v.description) for v in quota.violations] == [("tenant:acme", "tokens_per_minute used up")]
    assert retry.retry_delay.seconds == 30


async def test_unknown_exception_is_internal_without_its_text(stub):
    client, _ = stub
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.Generate(generation_pb2.GenerateRequest(model="crash"), metadata=(("x-request-id", "rid-42"),))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in err.value.details() and "postgres" not in err.value.details()
    assert "rid-42" in err.value.details()


async def test_malformed_bytes_are_invalid_argument_and_server_keeps_serving(stub):
    client, channel = stub
    raw = channel.unary_unary("/llmsuite.generation.v1.GenerationService/Generate",
                              request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw(b"\xff\xff\xff\xff\x0f")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reply = await client.Generate(generation_pb2.GenerateRequest(model="ok"))
    assert reply.text


async def test_request_id_and_tenant_come_from_metadata_and_are_echoed(stub):
    client, _ = stub
    call = client.Generate(generation_pb2.GenerateRequest(model="ok"),
                           metadata=(("x-request-id", "abc-1"), ("x-llmsuite-tenant", "acme")))
    reply = await call
    assert reply.text == "abc-1|acme"
    assert ("x-request-id", "abc-1") in tuple(await call.initial_metadata())
    generated = await client.Generate(generation_pb2.GenerateRequest(model="ok"))
    request_id, tenant = generated.text.split("|")
    assert len(request_id) == 32 and tenant == "dev"


async def test_error_after_stream_started_is_delivered(stub):
    client, _ = stub
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for message in client.GenerateStream(generation_pb2.GenerateStreamRequest(model="x")):
            received.append(message.text_delta)
    assert received == ["a"]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_metrics_count_calls_by_method_and_code(stub):
    client, _ = stub
    labels = {"service": "itest", "method": "Generate", "code": "INVALID_ARGUMENT"}
    before = REGISTRY.get_sample_value("llmsuite_rpc_requests_total", labels) or 0
    with pytest.raises(grpc.aio.AioRpcError):
        await client.Generate(generation_pb2.GenerateRequest(model="bad"))
    assert REGISTRY.get_sample_value("llmsuite_rpc_requests_total", labels) == before + 1
    assert REGISTRY.get_sample_value("llmsuite_rpc_in_flight", {"service": "itest", "method": "Generate"}) == 0


async def test_a_call_failing_before_any_message_sends_no_headers_first(stub):
    """Trailers only: the request id comes back with the status, so that the edge's
    JSON API can still answer with the error's HTTP status."""
    client, _ = stub
    call = client.Generate(generation_pb2.GenerateRequest(model="bad"), metadata=(("x-request-id", "rid-7"),))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert ("x-request-id", "rid-7") in tuple(err.value.trailing_metadata())
    assert not any(key == "x-request-id" for key, _ in (err.value.initial_metadata() or ()))


def test_the_last_message_of_a_failed_json_stream_carries_the_whole_status():
    """Streams whose response has an `error` field (InferenceService.GenerateStream) get
    one; others (GenerationService) do not. The InferenceService case runs through
    Envoy in tests/gateway/test_edge.py."""
    make = error_message_factory("/llmsuite.inference.v1.InferenceService/GenerateStream")
    status = InvalidArgument("prompt refused", field="prompt", reason="TEST").to_rpc_status()
    message = make(status)
    assert isinstance(message, inference_pb2.GenerateStreamResponse)
    assert (message.error.code, message.error.message) == (status.code, "prompt refused")
    assert list(message.error.details) == list(status.details)
    assert error_message_factory("/llmsuite.generation.v1.GenerationService/GenerateStream") is None


def _stream_calls(code: str) -> float:
    labels = {"service": "itest", "method": "GenerateStream", "code": code}
    return REGISTRY.get_sample_value("llmsuite_rpc_requests_total", labels) or 0


async def _until_counted(code: str, before: float) -> None:
    """The server records a cancelled stream once its handler unwound, after the client left."""
    async with asyncio.timeout(10):
        while _stream_calls(code) < before:
            await asyncio.sleep(0.01)


async def test_a_stream_the_client_cancels_counts_as_cancelled_and_logs_no_error(stub, caplog):
    """The defect of issue 18: a stream left mid-way was logged as an unhandled
    GeneratorExit and counted INTERNAL, which skewed every error rate."""
    client, _ = stub
    cancelled, internal = _stream_calls("CANCELLED"), _stream_calls("INTERNAL")
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            call = client.GenerateStream(generation_pb2.GenerateStreamRequest(model="endless"))
            assert (await call.read()).text_delta == "a"
            assert (await call.read()).text_delta == "a"
            call.cancel()
        await _until_counted("CANCELLED", cancelled + 5)
    assert _stream_calls("CANCELLED") == cancelled + 5
    assert _stream_calls("INTERNAL") == internal
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_stream_read_to_its_end_counts_as_ok(stub):
    client, _ = stub
    ok = _stream_calls("OK")
    call = client.GenerateStream(generation_pb2.GenerateStreamRequest(model="complete"))
    messages = [message async for message in call]
    assert messages[-1].HasField("final")
    assert await call.code() == grpc.StatusCode.OK
    await _until_counted("OK", ok + 1)
    assert _stream_calls("OK") == ok + 1


class _CallerGone:
    """The context of a call whose caller has left: its headers can no longer be sent."""

    def invocation_metadata(self):
        return ()

    async def send_initial_metadata(self, metadata):
        raise RuntimeError('Failed "execute_batch"')  # what grpc raises for a finished call

    async def abort(self, *args):
        raise AssertionError("an abort cannot reach a caller that left")


async def test_an_answer_its_caller_no_longer_waits_for_counts_as_cancelled_and_logs_no_error(caplog):
    """A load generator that stops at its time limit leaves calls whose answers cannot be
    sent; they were logged as unhandled errors and counted INTERNAL, now CANCELLED."""
    async def answer(request, context):
        return generation_pb2.GenerateResponse(text="made, but nobody waits for it")

    handle = ServerInterceptor("itest-gone", "dev")._wrap_unary(answer, "Generate", lambda raw: raw)
    labels = {"service": "itest-gone", "method": "Generate"}
    with caplog.at_level(logging.WARNING):
        with pytest.raises(asyncio.CancelledError):
            await handle(b"", _CallerGone())
    assert REGISTRY.get_sample_value("llmsuite_rpc_requests_total", {**labels, "code": "CANCELLED"}) == 1
    assert REGISTRY.get_sample_value("llmsuite_rpc_requests_total", {**labels, "code": "INTERNAL"}) is None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
