"""RAG and the semantic cache on the real retrieval service."""

import grpc
import pytest
from llmsuite.inference.v1 import inference_pb2 as pb
from llmsuite.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc

from services.router.documents import assemble
from services.router.validation import Turn
from tests.harness import assert_grpc_error, free_port
from tests.router.support import GARDEN, ask, expected_answer, model_prompt, prompt_tokens, start_router

pytestmark = pytest.mark.integration

SAMPLING = pb.SamplingParams(max_tokens=24)
DOCUMENTS = [
    retrieval_pb2.Document(id="tulips", title="Tulip bulbs",
                           text="Plant tulip bulbs in autumn, about fifteen centimetres deep, pointed end up."),
    retrieval_pb2.Document(id="roses", title="Roses", text="Roses need six hours of sun and rich, well-drained soil."),
    retrieval_pb2.Document(id="basil", title="Basil", text="Basil dislikes cold; keep it above twelve degrees."),
]
TENANTS = {"default": {}, "acme": {"template": "garden", "semantic_cache": True},
           "globex": {"template": "garden", "semantic_cache": True}}


@pytest.fixture(scope="module")
def retrieval(side_services):
    with grpc.insecure_channel(f"127.0.0.1:{side_services['retrieval']}") as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        stub.Upsert(retrieval_pb2.UpsertRequest(collection="garden", documents=DOCUMENTS), timeout=60,
                    metadata=[("x-llmsuite-tenant", "acme")])
        yield stub


@pytest.fixture(scope="module")
def rag_router(log_dir, generation_port, side_services, retrieval):
    router = start_router(log_dir, "router-rag", {"templates": {"default": {}, "garden": GARDEN.model_dump()},
                                                  "tenants": TENANTS},
                          {"generation_url": f"127.0.0.1:{generation_port}",
                           "retrieval_url": f"127.0.0.1:{side_services['retrieval']}"})
    yield router
    router.process.stop()


def test_retrieved_documents_reach_the_model_within_the_budget(rag_router, retrieval):
    question = "How deep should I plant tulip bulbs?"
    options = pb.RetrievalOptions(collection="garden", top_k=2)
    reply = ask(rag_router.stub(), question, tenant="acme", request_id="rid-rag", tier=pb.TIER_LIGHT,
                sampling=SAMPLING, retrieval=options, cache_policy=pb.CACHE_POLICY_BYPASS)
    hits = retrieval.Search(retrieval_pb2.SearchRequest(collection="garden", query=question, top_k=2), timeout=10,
                            metadata=[("x-llmsuite-tenant", "acme")]).hits
    documents = assemble(hits, 1024)
    assert documents[0].document_id == "tulips"
    prompt = model_prompt(GARDEN, [Turn("user", question)], "rid-rag", documents)
    assert "fifteen centimetres" in prompt
    assert reply.text == expected_answer("light", prompt, 24)
    assert reply.usage.input_tokens == prompt_tokens(prompt)
    assert [s.document_id for s in reply.sources] == [d.document_id for d in documents]
    assert not reply.degraded


def test_another_tenant_cannot_retrieve_from_the_collection(rag_router):
    with pytest.raises(grpc.RpcError) as err:
        ask(rag_router.stub(), "How deep should I plant tulip bulbs?", tenant="globex", sampling=SAMPLING,
            retrieval=pb.RetrievalOptions(collection="garden"))
    assert err.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED)


def test_semantic_cache_answers_paraphrases_but_not_different_questions_or_tenants(rag_router):
    stub = rag_router.stub()
    first = ask(stub, "What is the best soil for growing roses?", tenant="acme", sampling=SAMPLING)
    assert first.cache_status == pb.CACHE_STATUS_MISS
    paraphrase = ask(stub, "Which soil is best for growing roses?", tenant="acme", sampling=SAMPLING)
    assert paraphrase.cache_status == pb.CACHE_STATUS_HIT_SEMANTIC and paraphrase.text == first.text
    assert paraphrase.tier == pb.TIER_CACHE and paraphrase.cost_usd == 0
    different = ask(stub, "What is the best soil for growing tulips?", tenant="acme", sampling=SAMPLING)
    assert different.cache_status == pb.CACHE_STATUS_MISS
    other_tenant = ask(stub, "Which soil is best for growing roses?", tenant="globex", sampling=SAMPLING)
    assert other_tenant.cache_status == pb.CACHE_STATUS_MISS
    exact_only = ask(stub, "Which soil is the best one for growing roses?", tenant="acme", sampling=SAMPLING,
                     cache_policy=pb.CACHE_POLICY_EXACT)
    assert exact_only.cache_status == pb.CACHE_STATUS_MISS


def test_request_can_opt_in_to_the_semantic_cache(rag_router):
    stub = rag_router.stub()
    ask(stub, "How much sun does basil need?", sampling=SAMPLING, cache_policy=pb.CACHE_POLICY_SEMANTIC)
    hit = ask(stub, "How much sunlight does basil need?", sampling=SAMPLING, cache_policy=pb.CACHE_POLICY_SEMANTIC)
    assert hit.cache_status == pb.CACHE_STATUS_HIT_SEMANTIC
    # The default tenant has not opted in: without the request's opt-in only exact matches count.
    assert ask(stub, "How much sunlight does basil need?", sampling=SAMPLING).cache_status == pb.CACHE_STATUS_MISS


def test_unknown_collection_is_not_found(rag_router):
    with pytest.raises(grpc.RpcError) as err:
        ask(rag_router.stub(), "Anything?", tenant="acme", sampling=SAMPLING,
            retrieval=pb.RetrievalOptions(collection="no-such-collection"))
    assert_grpc_error(err.value, grpc.StatusCode.NOT_FOUND)


def test_retrieval_down_answers_without_context_marked_degraded(log_dir, generation_port):
    router = start_router(log_dir, "router-no-retrieval", {}, {
        "generation_url": f"127.0.0.1:{generation_port}", "retrieval_url": f"127.0.0.1:{free_port()}",
        "retry_attempts": 0})
    try:
        reply = ask(router.stub(), "How deep should I plant tulip bulbs?", sampling=SAMPLING, timeout=10,
                    retrieval=pb.RetrievalOptions(collection="garden"))
        assert reply.text and reply.degraded and list(reply.degraded_reasons) == ["retrieval_unavailable"]
        assert not reply.sources
    finally:
        router.process.stop()
