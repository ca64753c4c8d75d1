"""The pipeline on real processes: template reaching the model, cache, tiers, sessions."""

import grpc
import pytest
from llmsuite.inference.v1 import inference_pb2 as pb

from services.router.config import PromptTemplate
from services.router.validation import Turn
from tests.harness import assert_grpc_error
from tests.router.support import GARDEN, ask, ask_stream, expected_answer, model_prompt, prompt_tokens

pytestmark = pytest.mark.integration

LIGHT = pb.SamplingParams(max_tokens=24)


@pytest.fixture(scope="module")
def stub(router):
    return router.stub()


def test_model_receives_the_tenant_template_with_fenced_question(stub):
    question = "How deep should tulip bulbs be planted?"
    reply = ask(stub, question, tenant="acme", request_id="rid-template", tier=pb.TIER_LIGHT, sampling=LIGHT,
                cache_policy=pb.CACHE_POLICY_BYPASS)
    prompt = model_prompt(GARDEN, [Turn("user", question)], "rid-template")
    assert reply.text == expected_answer("light", prompt, 24)
    assert reply.usage.input_tokens == prompt_tokens(prompt)
    assert (reply.tier, reply.model, reply.cache_status) == (pb.TIER_LIGHT, "light", pb.CACHE_STATUS_BYPASS)
    assert reply.model_version and reply.request_id == "rid-template"
    assert reply.cost_usd > 0 and reply.overhead_ms > 0

    default = ask(stub, question, tenant="someone-else", request_id="rid-template", tier=pb.TIER_LIGHT,
                  sampling=LIGHT, cache_policy=pb.CACHE_POLICY_BYPASS)
    assert default.text == expected_answer("light", model_prompt(PromptTemplate(), [Turn("user", question)],
                                                                 "rid-template"), 24)


def test_exact_cache_hit_after_miss_and_never_across_tenants(stub):
    question = "Which soil do roses like?"
    first = ask(stub, question, tenant="acme", sampling=LIGHT)
    second = ask(stub, "  Which soil do   roses like? ", tenant="acme", sampling=LIGHT)
    assert first.cache_status == pb.CACHE_STATUS_MISS and first.tier in (pb.TIER_LIGHT, pb.TIER_FULL)
    assert second.cache_status == pb.CACHE_STATUS_HIT_EXACT and second.tier == pb.TIER_CACHE
    assert second.text == first.text and second.cost_usd == 0 and second.model == first.model
    other = ask(stub, question, tenant="globex", sampling=LIGHT)
    assert other.cache_status == pb.CACHE_STATUS_MISS  # same template and question, other tenant
    different = ask(stub, question, tenant="acme", sampling=pb.SamplingParams(max_tokens=25))
    assert different.cache_status == pb.CACHE_STATUS_MISS


def test_cache_policies_and_sampled_answers(stub):
    question = "Name a plant that grows in shade."
    assert ask(stub, question, cache_policy=pb.CACHE_POLICY_BYPASS, sampling=LIGHT).cache_status == pb.CACHE_STATUS_BYPASS
    assert ask(stub, question, cache_policy=pb.CACHE_POLICY_BYPASS, sampling=LIGHT).cache_status == pb.CACHE_STATUS_BYPASS
    ask(stub, question, cache_policy=pb.CACHE_POLICY_REFRESH, sampling=LIGHT)
    assert ask(stub, question, sampling=LIGHT).cache_status == pb.CACHE_STATUS_HIT_EXACT

    sampled = pb.SamplingParams(max_tokens=24, temperature=0.8, seed=7)
    for tenant, cached in (("default", False), ("sampler", True)):
        ask(stub, "Suggest a name for a garden.", tenant=tenant, sampling=sampled)
        again = ask(stub, "Suggest a name for a garden.", tenant=tenant, sampling=sampled)
        assert (again.cache_status == pb.CACHE_STATUS_HIT_EXACT) is cached
    ask(stub, question, tenant="nocache", sampling=LIGHT)
    assert ask(stub, question, tenant="nocache", sampling=LIGHT).cache_status == pb.CACHE_STATUS_BYPASS


def test_streamed_cache_hit_carries_the_same_text(stub):
    question = "What colour are ripe tomatoes?"
    first = list(ask_stream(stub, question, sampling=LIGHT))
    hit = list(ask_stream(stub, question, sampling=LIGHT))
    assert hit[-1].final.cache_status == pb.CACHE_STATUS_HIT_EXACT
    assert "".join(m.text_delta for m in hit[:-1]) == hit[-1].final.text == first[-1].final.text


def test_redis_cache_is_shared_by_replicas_and_isolated_by_tenant(redis_routers):
    a, b = (replica.stub() for replica in redis_routers)
    question = "How often should a cactus be watered?"
    first = ask(a, question, tenant="acme", sampling=LIGHT)
    assert first.cache_status == pb.CACHE_STATUS_MISS
    shared = ask(b, question, tenant="acme", sampling=LIGHT)
    assert shared.cache_status == pb.CACHE_STATUS_HIT_EXACT and shared.text == first.text
    assert ask(b, question, tenant="globex", sampling=LIGHT).cache_status == pb.CACHE_STATUS_MISS


@pytest.mark.parametrize("prompt, fields, tier, model", [
    ("What is the capital of France?", {}, pb.TIER_LIGHT, "light"),
    ("Explain why the sky is blue, step by step, and compare it with sunsets.", {}, pb.TIER_FULL, "full"),
    ("Explain why the sky is blue, step by step.", {"tier": pb.TIER_LIGHT}, pb.TIER_LIGHT, "light"),
    ("What is the capital of France?", {"model": "full"}, pb.TIER_FULL, "full"),
    ("What is the capital of France?", {"tier": pb.TIER_FULL}, pb.TIER_FULL, "full"),
])
def test_tier_choice_and_pinning(stub, prompt, fields, tier, model):
    reply = ask(stub, prompt, sampling=pb.SamplingParams(max_tokens=8), cache_policy=pb.CACHE_POLICY_BYPASS, **fields)
    assert (reply.tier, reply.model) == (tier, model)
    assert not reply.degraded


def test_full_costs_more_than_light_for_the_same_tokens(stub):
    prompt = "What is the capital of France?"
    light = ask(stub, prompt, tier=pb.TIER_LIGHT, sampling=pb.SamplingParams(max_tokens=8),
                cache_policy=pb.CACHE_POLICY_BYPASS)
    full = ask(stub, prompt, tier=pb.TIER_FULL, sampling=pb.SamplingParams(max_tokens=8),
               cache_policy=pb.CACHE_POLICY_BYPASS)
    assert full.usage.input_tokens == light.usage.input_tokens
    assert full.cost_usd > light.cost_usd > 0


def test_session_history_reaches_the_model_and_stays_with_its_tenant(stub):
    first_q, second_q = "My garden faces north.", "Which vegetables will grow there?"
    first = ask(stub, first_q, tenant="acme", session_id="s-1", request_id="rid-s1", tier=pb.TIER_LIGHT,
                sampling=LIGHT)
    second = ask(stub, second_q, tenant="acme", session_id="s-1", request_id="rid-s2", tier=pb.TIER_LIGHT,
                 sampling=LIGHT)
    history = [Turn("user", first_q), Turn("assistant", first.text), Turn("user", second_q)]
    prompt = model_prompt(GARDEN, history, "rid-s2")
    assert second.text == expected_answer("light", prompt, 24)
    assert second.session_id == "s-1" and second.usage.input_tokens == prompt_tokens(prompt)
    stranger = ask(stub, second_q, tenant="globex", session_id="s-1", request_id="rid-s3", tier=pb.TIER_LIGHT,
                   sampling=LIGHT)
    assert stranger.text == expected_answer("light", model_prompt(GARDEN, [Turn("user", second_q)], "rid-s3"), 24)


@pytest.mark.parametrize("fields, fragment", [
    ({"prompt": ""}, "prompt is empty"),
    ({"prompt": "x", "session_id": "a\nb"}, "session_id"),
    ({"prompt": "x", "model": "no-such-model"}, "no-such-model"),
])
def test_bad_requests_get_clear_errors(stub, fields, fragment):
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(pb.GenerateRequest(**fields), timeout=10)
    code = grpc.StatusCode.NOT_FOUND if "model" in fields else grpc.StatusCode.INVALID_ARGUMENT
    assert_grpc_error(err.value, code, fragment)


def test_rag_without_retrieval_configured_is_a_clear_error(stub):
    with pytest.raises(grpc.RpcError) as err:
        ask(stub, "What do the docs say?", retrieval=pb.RetrievalOptions(collection="docs"))
    assert_grpc_error(err.value, grpc.StatusCode.FAILED_PRECONDITION, "retrieval is not configured")
