"""Triton absent, killed and restarted: callers get UNAVAILABLE in time, then answers again."""

import signal
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status
from google.rpc import error_details_pb2
from llmsuite.generation.v1 import generation_pb2 as pb, generation_pb2_grpc

from tests.harness import ServiceProcess, assert_grpc_error, free_port, grpc_health_status, poll, service_env
from tests.stack_fixtures import start_generation, start_triton

pytestmark = pytest.mark.integration

REQUEST = pb.GenerateRequest(model="light", prompt="Are you there?", sampling=pb.SamplingParams(max_tokens=4))
STREAM_REQUEST = pb.GenerateStreamRequest(model="light", prompt="Are you there?", sampling=pb.SamplingParams(max_tokens=4))


def has_retry_info(err: grpc.RpcError) -> bool:
    status = rpc_status.from_call(err)
    return status is not None and any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)


def assert_unavailable(stub) -> None:
    """Both RPCs fail with UNAVAILABLE (+ RetryInfo); a hang would end as DEADLINE_EXCEEDED."""
    with pytest.raises(grpc.RpcError) as caught:
        stub.Generate(REQUEST, timeout=5)
    assert_grpc_error(caught.value, grpc.StatusCode.UNAVAILABLE, "triton")
    assert has_retry_info(caught.value)
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.GenerateStream(STREAM_REQUEST, timeout=5))
    assert_grpc_error(caught.value, grpc.StatusCode.UNAVAILABLE, "triton")


def answers(stub) -> bool:
    try:
        return stub.Generate(REQUEST, timeout=5).output_tokens == 4
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return False


def test_not_serving_until_triton_is_up_and_models_warm(log_dir):
    triton_ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}
    port = free_port()
    settings = {"port": port, "metrics_port": free_port(), "triton_url": f"127.0.0.1:{triton_ports['grpc_port']}"}
    generation = ServiceProcess("generation-before-triton", [sys.executable, "-m", "services.generation"], log_dir,
                                env=service_env("generation", settings)).start()
    triton = None
    try:
        generation.wait_until(lambda: grpc_health_status(port) is not None, "health answering", timeout=60)
        assert grpc_health_status(port) == health_pb2.HealthCheckResponse.NOT_SERVING
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            assert_unavailable(stub)
            models = stub.ListModels(pb.ListModelsRequest(), timeout=5).models
            assert [model.ready for model in models] == [False] * 4
            assert grpc_health_status(port) == health_pb2.HealthCheckResponse.NOT_SERVING

            triton, _ = start_triton(log_dir, name="triton-late", **triton_ports)
            generation.wait_grpc_healthy(port, timeout=60)
            assert stub.Generate(REQUEST, timeout=10).output_tokens == 4
    finally:
        generation.stop()
        if triton is not None:
            triton.stop()


def test_triton_outage_fails_fast_then_recovers_without_restart(log_dir):
    triton, triton_port = start_triton(log_dir, name="triton-outage")
    generation, port = start_generation(log_dir, triton_port, name="generation-outage")
    restarted = None
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            assert answers(stub)

            # Killed mid-stream: the stream ends with UNAVAILABLE instead of hanging.
            stream = stub.GenerateStream(pb.GenerateStreamRequest(
                model="full", prompt="A long answer, please.", sampling=pb.SamplingParams(max_tokens=1000)), timeout=30)
            assert next(stream).text_delta
            triton.signal(signal.SIGKILL)
            with pytest.raises(grpc.RpcError) as caught:
                list(stream)
            assert_grpc_error(caught.value, grpc.StatusCode.UNAVAILABLE)
            triton.stop()

            # Down: every call fails within its deadline, also once the breaker is open.
            for _ in range(4):
                assert_unavailable(stub)

            restarted, _ = start_triton(log_dir, grpc_port=triton.grpc_port, http_port=triton.http_port,
                                        metrics_port=triton.metrics_port, name="triton-restarted")
            poll(lambda: answers(stub), "an answer after Triton restarted", timeout=30)
            *_, last = stub.GenerateStream(STREAM_REQUEST, timeout=10)
            assert last.final.output_tokens == 4
    finally:
        generation.stop()
        triton.stop()
        if restarted is not None:
            restarted.stop()
