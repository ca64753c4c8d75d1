"""Traces: one request through the edge is one connected trace across every process on its path.

The stack (authz and rate limits on, the stand-ins in Triton) exports to an OTLP
receiver of the test's own (tests/otlp_receiver.py), as it would to a collector.
"""

import json
import urllib.request

import grpc
import pytest
from llmsuite.inference.v1 import inference_pb2, inference_pb2_grpc
from llmsuite.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc

from services.common.context import TENANT_HEADER
from services.common.tracing import TracingSettings
from services.stack.stack import Ports, Stack
from tests.harness import poll
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.stack_fixtures import CPU_MODEL_REPOSITORY

pytestmark = pytest.mark.integration

COLLECTION = "garden"
DOCUMENTS = [
    retrieval_pb2.Document(id="tulips", title="Tulip bulbs",
                           text="Plant tulip bulbs in autumn, about fifteen centimetres deep, pointed end up."),
    retrieval_pb2.Document(id="basil", title="Basil", text="Basil dislikes cold; keep it above twelve degrees."),
]
QUESTION = "How deep should the bulbs of my tulips go, please?"
# Every process a RAG request passes through, as its spans name it (service.name). The rate
# limiter too, but not always: Envoy gives it 0.25 s and goes on without it (fail open), so
# on a loaded machine its span may be missing; when present, it continues Envoy's.
PATH = {"envoy", "authz", "router", "guardrails", "retrieval", "generation", "triton"}
ROUTER_STAGES = {"admit", "input check", "cache", "documents", "generation", "output check"}


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    with OtlpReceiver() as receiver:
        stack = Stack(ports=Ports.free(), var_dir=tmp_path_factory.mktemp("traced-stack"),
                      model_repository=CPU_MODEL_REPOSITORY,
                      tracing=TracingSettings(otlp_endpoint=receiver.grpc_endpoint, otlp_http_url=receiver.http_url))
        with stack:
            yield stack, receiver


@pytest.fixture(scope="module")
def answered(traced):
    """One RAG request through the edge with the development key: (reply, its trace's spans)."""
    stack, receiver = traced
    # The documents go in directly (no edge, no traceparent): that call makes no trace.
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.retrieval}") as channel:
        retrieval_pb2_grpc.RetrievalServiceStub(channel).Upsert(
            retrieval_pb2.UpsertRequest(collection=COLLECTION, documents=DOCUMENTS), timeout=60,
            metadata=[(TENANT_HEADER, "default")])
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.envoy}") as channel:
        reply = inference_pb2_grpc.InferenceServiceStub(channel).Generate(inference_pb2.GenerateRequest(
            prompt=QUESTION, tier=inference_pb2.TIER_LIGHT, cache_policy=inference_pb2.CACHE_POLICY_BYPASS,
            sampling=inference_pb2.SamplingParams(max_tokens=16),
            retrieval=inference_pb2.RetrievalOptions(collection=COLLECTION, top_k=2)),
            metadata=[("authorization", f"Bearer {stack.api_key}")], timeout=60)
    assert reply.sources, "the request was meant to use retrieval"
    assert reply.text.strip()

    return reply, whole_trace(receiver, reply.request_id, PATH)


def whole_trace(receiver: OtlpReceiver, request_id: str, services: set[str]) -> list[ReceivedSpan]:
    """The spans of the trace Envoy started for `request_id`, once every parent and `services` arrived."""
    seen = {"services": set(), "orphans": []}

    def received() -> list[ReceivedSpan] | None:
        spans = receiver.spans()
        roots = [span for span in spans if span.service == "envoy" and not span.parent_id
                 and span.attributes.get("guid:x-request-id") == request_id]
        if len(roots) != 1:
            return None
        trace = [span for span in spans if span.trace_id == roots[0].trace_id]
        ids = {span.span_id for span in trace}
        # Processes export in their own batches: wait until every parent arrived too.
        seen["orphans"] = [f"{span.service} {span.name}" for span in trace
                           if span is not roots[0] and span.parent_id not in ids]
        seen["services"] = {span.service for span in trace}
        return trace if not seen["orphans"] and services <= seen["services"] else None

    # Envoy exports every five seconds, the services and Triton every second or five.
    try:
        return poll(received, f"the whole trace of {request_id} at the receiver", timeout=60)
    except AssertionError as err:
        raise AssertionError(f"{err}: missing {sorted(services - seen['services'])}, "
                             f"parents missing for {seen['orphans']}") from None


def entries(spans: list[ReceivedSpan], service: str) -> list[ReceivedSpan]:
    """The spans of `service` whose parent is in another process: where it continued its caller's trace."""
    by_id = {span.span_id: span for span in spans}
    return [span for span in spans if span.service == service and by_id[span.parent_id].service != service]


def test_the_request_is_one_connected_trace_rooted_at_envoy(answered):
    _, spans = answered
    by_id = {span.span_id: span for span in spans}
    assert len(by_id) == len(spans), "span ids repeat"
    roots = [span for span in spans if not span.parent_id]
    assert len(roots) == 1 and roots[0].service == "envoy"
    # Every span reaches the root through its parents: one tree, no cycles.
    for span in spans:
        seen = set()
        while span.parent_id:
            assert span.span_id not in seen
            seen.add(span.span_id)
            span = by_id[span.parent_id]
        assert span is roots[0]


def test_every_process_on_the_path_has_spans_and_each_hop_continues_its_caller(answered):
    _, spans = answered
    by_id = {span.span_id: span for span in spans}
    assert PATH <= {span.service for span in spans}
    # A process's first span in the trace has a parent in the process that called it.
    callers = {"router": "envoy", "authz": "envoy", "guardrails": "router", "retrieval": "router",
               "generation": "router", "triton": "generation"}
    for service, caller in callers.items():
        continued = entries(spans, service)
        assert continued, f"no span of {service} continues another process's span"
        assert {by_id[span.parent_id].service for span in continued} == {caller}, service
    assert {by_id[span.parent_id].service for span in entries(spans, "ratelimit")} <= {"envoy"}


def test_the_router_stages_are_spans_with_genai_attributes(answered):
    reply, spans = answered
    stage = {span.name: span for span in spans if span.service == "router"}
    assert ROUTER_STAGES <= set(stage)
    for name in ROUTER_STAGES:
        assert stage[name].attributes["llmsuite.tenant"] == "default", name
    assert stage["cache"].attributes["llmsuite.cache.hit"] is False
    assert stage["documents"].attributes["llmsuite.retrieval.documents"] == len(reply.sources)
    assert stage["input check"].attributes["llmsuite.guardrails.verdict"] == "allow"
    assert stage["output check"].attributes["llmsuite.guardrails.verdict"] == "allow"
    finish_reason = inference_pb2.FinishReason.Name(reply.finish_reason).removeprefix("FINISH_REASON_").lower()
    chat = [span for span in spans if span.service == "generation" and span.name == "chat light"]
    assert len(chat) == 1
    for span in (stage["generation"], chat[0]):
        attributes = span.attributes
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.request.model"] == "light"
        assert attributes["gen_ai.request.max_tokens"] == 16
        assert attributes["gen_ai.usage.input_tokens"] == reply.usage.input_tokens > 0
        assert attributes["gen_ai.usage.output_tokens"] == reply.usage.output_tokens > 0
        assert attributes["gen_ai.response.finish_reasons"] == (finish_reason,)
        assert attributes["llmsuite.tenant"] == "default"
    # Triton's spans hang below generation's GenAI span: its call is their parent.
    assert {span.parent_id for span in entries(spans, "triton")} == {chat[0].span_id}


def test_no_span_carries_prompt_answer_or_document_text(answered):
    reply, spans = answered
    texts = [QUESTION, "tulips go", reply.text.strip(), "fifteen centimetres"]
    for span in spans:
        values = [*span.attributes.values(), *(v for event in span.event_attributes for v in event.values())]
        for value in values:
            for text in texts:
                assert text not in str(value), f"{span.service} {span.name} carries {text!r}"


def test_a_request_to_the_openai_api_is_traced_through_its_adapter(traced):
    stack, receiver = traced
    body = {"model": "llmsuite/light", "messages": [{"role": "user", "content": "Name a colour of tulips."}],
            "max_tokens": 8}
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.ports.envoy}/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
        headers={"authorization": f"Bearer {stack.api_key}", "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        request_id = response.headers["x-request-id"]
        assert json.load(response)["choices"][0]["message"]["content"]
    spans = whole_trace(receiver, request_id, {"envoy", "openai", "router", "generation", "triton"})
    by_id = {span.span_id: span for span in spans}
    (adapter,) = entries(spans, "openai")
    assert adapter.name == "POST /v1/chat/completions" and by_id[adapter.parent_id].service == "envoy"
    assert adapter.attributes["llmsuite.tenant"] == "default"
    assert adapter.attributes["http.response.status_code"] == 200
    assert {by_id[span.parent_id].service for span in entries(spans, "router")} == {"openai"}
