"""Degradation on real processes: overloaded full model, Triton killed mid-run, breaker open and recovery."""

import signal
import time

import grpc
import pytest
from llmsuite.inference.v1 import inference_pb2 as pb

from services.router.config import PromptTemplate
from tests.router.support import (
    ask,
    ask_stream,
    error_info,
    has_retry_info,
    long_answer_request_id,
    start_router,
)
from tests.harness import poll
from tests.stack_fixtures import start_generation, start_triton

pytestmark = pytest.mark.integration

LONG = pb.SamplingParams(max_tokens=300)


def test_full_model_over_its_in_flight_cap_degrades_to_light(log_dir, generation_port):
    router = start_router(log_dir, "router-cap", {}, {"generation_url": f"127.0.0.1:{generation_port}",
                                                      "max_in_flight": 1})
    try:
        stub = router.stub()
        question = "Write a long story about gardens."
        stream = ask_stream(stub, question, request_id=long_answer_request_id(PromptTemplate(), question, "full", 300),
                            tier=pb.TIER_FULL, sampling=LONG, cache_policy=pb.CACHE_POLICY_BYPASS)
        assert next(stream).text_delta  # the full model's only slot is taken now
        reply = ask(stub, "Explain why leaves turn red in autumn, step by step.", sampling=pb.SamplingParams(max_tokens=8))
        assert (reply.tier, reply.model) == (pb.TIER_LIGHT, "light")
        assert reply.degraded and list(reply.degraded_reasons) == ["full_model_unavailable"]
        assert reply.cache_status == pb.CACHE_STATUS_MISS
        again = ask(stub, "Explain why leaves turn red in autumn, step by step.", sampling=pb.SamplingParams(max_tokens=8))
        assert again.cache_status != pb.CACHE_STATUS_HIT_EXACT, "degraded answers are not cached"
        assert list(stream)[-1].final.tier == pb.TIER_FULL
        assert router.metric("llmsuite_router_degraded_total", reason="full_model_unavailable") >= 1
        assert router.metric("llmsuite_router_upstream_rejected_total", upstream="generation/full",
                             reason="overloaded") >= 1
    finally:
        router.process.stop()


@pytest.fixture
def own_backend(log_dir):
    """Triton, generation and a router of their own: this test kills Triton."""
    triton, triton_port = start_triton(log_dir, name="triton-outage")
    processes = [triton]
    try:
        generation, generation_port = start_generation(log_dir, triton_port, name="generation-outage")
        processes.append(generation)
        router = start_router(log_dir, "router-outage", {}, {
            "generation_url": f"127.0.0.1:{generation_port}", "breaker_failures": 2, "breaker_reset_s": 1.0,
            "retry_attempts": 1, "retry_base_delay_s": 0.01})
        processes.append(router.process)
        yield triton, router
    finally:
        for process in reversed(processes):
            process.stop()


def test_triton_killed_mid_run_then_breaker_opens_and_recovers(log_dir, own_backend):
    triton, router = own_backend
    stub = router.stub()
    cached_question = "Which tree gives the best shade?"
    ask(stub, cached_question, sampling=pb.SamplingParams(max_tokens=8))

    question = "Tell me a very long story about a gardener."
    stream = ask_stream(stub, question, request_id=long_answer_request_id(PromptTemplate(), question, "full", 300),
                        tier=pb.TIER_FULL, sampling=LONG, cache_policy=pb.CACHE_POLICY_BYPASS, timeout=20)
    assert next(stream).text_delta
    started = time.monotonic()
    triton.signal(signal.SIGKILL)
    with pytest.raises(grpc.RpcError) as err:
        list(stream)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert time.monotonic() - started < 10, "the broken stream ends well within its deadline"

    # Generation is down: a cached answer still comes back, marked degraded...
    fallback = ask(stub, cached_question, sampling=pb.SamplingParams(max_tokens=8),
                   cache_policy=pb.CACHE_POLICY_REFRESH, timeout=10)
    assert fallback.cache_status == pb.CACHE_STATUS_HIT_EXACT and fallback.tier == pb.TIER_CACHE
    assert fallback.degraded and "generation_unavailable" in fallback.degraded_reasons
    # ...anything else is UNAVAILABLE with RetryInfo, quickly.
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as err:
            ask(stub, "Is anyone there?", sampling=pb.SamplingParams(max_tokens=8), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert has_retry_info(err.value) and error_info(err.value).reason == "GENERATION_UNAVAILABLE"
    assert router.metric("llmsuite_router_breaker_state", upstream="generation/light") == 2

    restarted, _ = start_triton(log_dir, grpc_port=triton.grpc_port, http_port=triton.http_port,
                                metrics_port=triton.metrics_port, name="triton-outage-restarted")
    try:
        def answers() -> bool:
            try:
                return bool(ask(stub, "Back again?", sampling=pb.SamplingParams(max_tokens=4), timeout=5).text)
            except grpc.RpcError as failure:
                assert failure.code() == grpc.StatusCode.UNAVAILABLE, failure.details()
                return False
        poll(answers, "answers after Triton restarted", timeout=30)
        assert router.metric("llmsuite_router_breaker_state", upstream="generation/light") == 0
    finally:
        restarted.stop()
