"""OpenAI's shapes to the router's protos and back: pure functions, no process."""

import base64
import struct

import pytest
from llmsuite.inference.v1 import inference_pb2
from llmsuite.retrieval.v1 import retrieval_pb2

from services.openai import translate
from services.openai.errors import ApiError
from services.openai.schema import ChatCompletionRequest

COMPLETION = translate.Completion(id="chatcmpl-r1", created=1700000000, model="llmsuite/auto")


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "llmsuite/auto", "messages": [{"role": "user", "content": "hi"}], **fields})


def reply(**fields) -> inference_pb2.GenerateResponse:
    values = dict(text="Hello there.", finish_reason=inference_pb2.FINISH_REASON_STOP,
                  usage=inference_pb2.Usage(input_tokens=12, output_tokens=3, total_tokens=15), cost_usd=0.0000125,
                  tier=inference_pb2.TIER_LIGHT, model="light", model_version="1",
                  cache_status=inference_pb2.CACHE_STATUS_MISS, request_id="r1", overhead_ms=4.25)
    values.update(fields)
    return inference_pb2.GenerateResponse(**values)


def test_roles_and_text_parts_become_router_messages():
    request = translate.router_request(chat(messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Answer in English."},
        {"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "again", "name": "ignored"},
    ]))
    assert [(m.role, m.content) for m in request.messages] == [
        (inference_pb2.ROLE_SYSTEM, "Be brief."), (inference_pb2.ROLE_SYSTEM, "Answer in English."),
        (inference_pb2.ROLE_USER, "first\nsecond"), (inference_pb2.ROLE_ASSISTANT, "ok"),
        (inference_pb2.ROLE_USER, "again")]


@pytest.mark.parametrize("model, tier, pinned", [
    ("llmsuite/auto", inference_pb2.TIER_UNSPECIFIED, ""),
    ("llmsuite/light", inference_pb2.TIER_LIGHT, ""),
    ("llmsuite/full", inference_pb2.TIER_FULL, ""),
    ("full", inference_pb2.TIER_UNSPECIFIED, "full"),
    ("gpt-4o", inference_pb2.TIER_UNSPECIFIED, "gpt-4o"),
])
def test_tier_names_pin_a_tier_and_other_names_a_model(model, tier, pinned):
    request = translate.router_request(chat(model=model))
    assert (request.tier, request.model) == (tier, pinned)


def test_sampling_fields_and_max_completion_tokens_wins():
    request = translate.router_request(chat(max_tokens=10, max_completion_tokens=20, temperature=0.5, top_p=0.9,
                                            seed=7, stop="END"))
    sampling = request.sampling
    assert (sampling.max_tokens, sampling.temperature, sampling.seed) == (20, 0.5, 7)
    assert sampling.top_p == pytest.approx(0.9)
    assert list(sampling.stop) == ["END"]
    assert list(translate.router_request(chat(stop=["a", "b"])).sampling.stop) == ["a", "b"]


def test_the_user_keeps_its_canary_variant_and_is_unset_when_absent():
    assert translate.router_request(chat(user="user-42")).user == "user-42"
    assert translate.router_request(chat(user="u" * 256), inference_pb2.GenerateStreamRequest).user == "u" * 256
    assert translate.router_request(chat()).user == ""


def test_unset_fields_stay_unset_for_the_router_defaults():
    sampling = translate.router_request(chat()).sampling
    assert not any(sampling.HasField(name) for name in ("max_tokens", "temperature", "top_p", "seed"))


def test_a_stream_request_carries_the_same_fields():
    unary = translate.router_request(chat(max_tokens=5, model="llmsuite/full"))
    stream = translate.router_request(chat(max_tokens=5, model="llmsuite/full"), inference_pb2.GenerateStreamRequest)
    assert isinstance(stream, inference_pb2.GenerateStreamRequest)
    assert stream.SerializeToString() == unary.SerializeToString()


@pytest.mark.parametrize("content, param", [
    (None, "messages[0].content"),
    ([{"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}], "messages[0].content[0]"),
])
def test_missing_or_non_text_content_is_a_400_naming_it(content, param):
    with pytest.raises(ApiError) as err:
        translate.router_request(chat(messages=[{"role": "user", "content": content}]))
    assert (err.value.status, err.value.param) == (400, param)


def test_chat_completion_object():
    body = translate.chat_completion(reply(), COMPLETION)
    assert body["id"] == "chatcmpl-r1" and body["object"] == "chat.completion" and body["created"] == 1700000000
    assert body["model"] == "llmsuite/auto"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello there."},
                                "finish_reason": "stop", "logprobs": None}]
    assert body["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    assert body["llmsuite"]["tier"] == "light" and body["llmsuite"]["model"] == "light"
    assert body["llmsuite"]["cache"] == "miss" and body["llmsuite"]["request_id"] == "r1"


@pytest.mark.parametrize("reason, name", [
    (inference_pb2.FINISH_REASON_STOP, "stop"),
    (inference_pb2.FINISH_REASON_LENGTH, "length"),
    (inference_pb2.FINISH_REASON_CONTENT_FILTER, "content_filter"),
])
def test_finish_reasons(reason, name):
    assert translate.chat_completion(reply(finish_reason=reason), COMPLETION)["choices"][0]["finish_reason"] == name


def test_llmsuite_fields_as_headers_and_extension():
    answer = reply(tier=inference_pb2.TIER_CACHE, cache_status=inference_pb2.CACHE_STATUS_HIT_EXACT, degraded=True,
                   degraded_reasons=["full_model_unavailable"],
                   guardrail_findings=[inference_pb2.GuardrailFinding(stage="input", entity="EMAIL_ADDRESS",
                                                                      action="redact", score=0.95)],
                   model="full", model_variant="full@2", template_version="3")
    headers = translate.headers(answer)
    assert (headers["x-llmsuite-model"], headers["x-llmsuite-model-variant"]) == ("full", "full@2")
    assert headers["x-llmsuite-template-version"] == "3"
    assert headers["x-llmsuite-tier"] == "cache" and headers["x-llmsuite-cache"] == "hit_exact"
    assert headers["x-llmsuite-degraded"] == "true"
    assert headers["x-llmsuite-degraded-reasons"] == "full_model_unavailable"
    assert headers["x-llmsuite-guardrail-findings"] == "input:EMAIL_ADDRESS:redact"
    assert headers["x-llmsuite-cost-usd"] == "0.00001250" and headers["x-llmsuite-overhead-ms"] == "4.250"
    assert all(value.isascii() for value in headers.values())
    extension = translate.extension(answer)
    assert (extension["model_variant"], extension["template_version"]) == ("full@2", "3")
    assert extension["degraded"] is True and extension["degraded_reasons"] == ["full_model_unavailable"]
    assert extension["guardrail_findings"] == [{"stage": "input", "entity": "EMAIL_ADDRESS", "action": "redact",
                                                "score": 0.95}]


def test_chunks_and_the_usage_chunk():
    delta = translate.chunk(COMPLETION, {"content": "Hel"})
    assert delta["object"] == "chat.completion.chunk" and "usage" not in delta
    assert delta["choices"] == [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None, "logprobs": None}]
    assert translate.chunk(COMPLETION, {"content": "x"}, with_usage=True)["usage"] is None
    final = translate.final_chunk(reply(finish_reason=inference_pb2.FINISH_REASON_LENGTH), COMPLETION,
                                  with_usage=True)
    assert final["choices"][0]["delta"] == {} and final["choices"][0]["finish_reason"] == "length"
    assert final["llmsuite"]["tier"] == "light"
    last = translate.usage_chunk(reply(), COMPLETION)
    assert last["choices"] == [] and last["usage"]["total_tokens"] == 15


def test_embeddings_as_floats_or_base64():
    answer = retrieval_pb2.EmbedResponse(embeddings=[retrieval_pb2.Embedding(values=[0.5, -0.25])],
                                         model="sentence-transformers/all-MiniLM-L6-v2", dimension=2, input_tokens=5)
    floats = translate.embeddings(answer, "all-MiniLM-L6-v2", "float")
    assert floats["data"] == [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]}]
    assert floats["model"] == "all-MiniLM-L6-v2"
    assert floats["usage"] == {"prompt_tokens": 5, "total_tokens": 5}
    encoded = translate.embeddings(answer, "all-MiniLM-L6-v2", "base64")["data"][0]["embedding"]
    assert struct.unpack("<2f", base64.b64decode(encoded)) == (0.5, -0.25)


@pytest.mark.parametrize("value, texts", [("one", ["one"]), (["a", "b"], ["a", "b"])])
def test_embedding_input_string_or_list(value, texts):
    assert translate.embedding_texts(value) == texts


@pytest.mark.parametrize("value", [[], [1, 2, 3], [[1, 2]]])
def test_empty_input_and_token_arrays_are_refused(value):
    with pytest.raises(ApiError) as err:
        translate.embedding_texts(value)
    assert (err.value.status, err.value.param) == (400, "input")
