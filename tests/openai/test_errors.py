"""Request bodies and errors in OpenAI's shape: pure functions, no process."""

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from gateway.authz.config import DEFAULT_RULES
from gateway.authz.decision import required_scope
from services.common.errors import InvalidArgument, ResourceExhausted, Unavailable
from services.openai.errors import ApiError, from_rpc_error
from services.openai.handlers import CHAT_SCOPE, EMBEDDING_SCOPE
from services.openai.schema import ChatCompletionRequest, EmbeddingRequest, parse_json, unsupported, validated


def aio_error(code: grpc.StatusCode, details: str, status: status_pb2.Status | None = None) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if status is not None:
        trailing.add("grpc-status-details-bin", status.SerializeToString())
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details)


def from_service_error(err) -> ApiError:
    return from_rpc_error(aio_error(err.code, err.message, err.to_rpc_status()), "router")


def test_a_guardrail_block_is_a_400_content_policy_violation():
    error = from_service_error(InvalidArgument("the input guardrails blocked this request", reason="INPUT_BLOCKED",
                                               field="messages[0].content"))
    assert (error.status, error.type, error.code, error.param) == (
        400, "invalid_request_error", "content_policy_violation", "messages[0].content")
    assert error.body() == {"error": {"message": "the input guardrails blocked this request",
                                      "type": "invalid_request_error", "param": "messages[0].content",
                                      "code": "content_policy_violation"}}


@pytest.mark.parametrize("field, param", [("sampling.max_tokens", "max_tokens"), ("sampling.stop[2]", "stop"),
                                          ("prompt", "messages"), ("messages[1].role", "messages[1].role")])
def test_router_field_names_become_the_fields_the_caller_sent(field, param):
    assert from_service_error(InvalidArgument("bad", field=field)).param == param


def test_the_system_prompt_rule_keeps_its_reason_as_code():
    error = from_service_error(InvalidArgument("system messages are not accepted", field="messages[0].role",
                                               reason="CLIENT_SYSTEM_PROMPT_NOT_ALLOWED"))
    assert (error.status, error.code) == (400, "client_system_prompt_not_allowed")


def test_rate_limits_and_budgets_are_429_with_retry_after():
    limited = from_service_error(ResourceExhausted("slow down", reason="RATE_LIMITED", retry_after_s=2.2))
    assert (limited.status, limited.code, limited.headers()) == (429, "rate_limit_exceeded", {"retry-after": "3"})
    budget = from_service_error(ResourceExhausted("tenant budget spent", reason="BUDGET_EXHAUSTED"))
    assert (budget.status, budget.code, budget.headers()) == (429, "insufficient_quota", {"retry-after": "1"})


def test_upstream_down_is_503_with_the_services_message_and_retry_after():
    error = from_service_error(Unavailable("generation is unavailable", reason="GENERATION_UNAVAILABLE",
                                           retry_after_s=5))
    assert (error.status, error.type, error.code, error.message, error.retry_after_s) == (
        503, "server_error", "service_unavailable", "generation is unavailable", 5)


def test_transport_errors_never_reach_the_caller():
    error = from_rpc_error(aio_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; "
                                     "ipv4:10.0.0.7:50051: Connection refused"), "router")
    assert error.status == 503 and "10.0.0.7" not in error.message and error.message == \
        "the router is unavailable; retry later"
    unknown = from_rpc_error(aio_error(grpc.StatusCode.UNKNOWN, "Stream removed"), "router")
    assert unknown.status == 500 and "Stream removed" not in unknown.message


def test_deadline_is_504_and_unknown_model_404():
    deadline = from_rpc_error(aio_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), "router")
    assert (deadline.status, deadline.code) == (504, "timeout")
    missing = from_rpc_error(aio_error(grpc.StatusCode.NOT_FOUND, "unknown model 'gpt-4o'",
                                       status_pb2.Status(code=code_pb2.NOT_FOUND, message="unknown model 'gpt-4o'")),
                             "router")
    assert (missing.status, missing.code, missing.message) == (404, "model_not_found", "unknown model 'gpt-4o'")


def test_details_of_another_domain_do_not_pass_as_reasons():
    status = status_pb2.Status(code=code_pb2.INTERNAL, message="boom at 10.1.2.3")
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason="SECRET_THING", domain="googleapis.com"))
    error = from_rpc_error(aio_error(grpc.StatusCode.INTERNAL, "boom at 10.1.2.3", status), "router")
    assert error.status == 500 and error.code is None and "10.1.2.3" not in error.message


@pytest.mark.parametrize("raw, fragment", [
    (b"", "empty"),
    (b"model=x&messages=y", "not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
def test_bodies_that_are_not_json_are_a_400(raw, fragment):
    with pytest.raises(ApiError) as err:
        parse_json(raw)
    assert err.value.status == 400 and fragment in err.value.message


@pytest.mark.parametrize("body, param", [
    ([1, 2], None),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": -1}, "seed"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": 5}, "stop"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2**40}, "max_tokens"),
])
def test_invalid_chat_bodies_name_the_field(body, param):
    with pytest.raises(ApiError) as err:
        validated(ChatCompletionRequest, body)
    assert err.value.status == 400 and err.value.param == param


def test_unknown_fields_are_ignored():
    chat = validated(ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "x"}],
                                             "presence_penalty": 0.5, "metadata": {"a": "b"}, "store": False,
                                             "future_field": [[[1]]]})
    unsupported(chat)
    assert chat.model == "m"


@pytest.mark.parametrize("extra, param", [
    ({"n": 2}, "n"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"logprobs": True}, "logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
])
def test_what_would_change_the_answer_if_ignored_is_refused(extra, param):
    chat = validated(ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "x"}], **extra})
    with pytest.raises(ApiError) as err:
        unsupported(chat)
    assert err.value.status == 400 and err.value.param == param


def test_defaults_of_unsupported_fields_pass():
    chat = validated(ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 1,
                                             "tools": [], "logprobs": False, "response_format": {"type": "text"}})
    unsupported(chat)


def test_embedding_body():
    body = validated(EmbeddingRequest, {"model": "all-MiniLM-L6-v2", "input": "hi", "encoding_format": "base64"})
    assert body.encoding_format == "base64"
    with pytest.raises(ApiError) as err:
        validated(EmbeddingRequest, {"model": "all-MiniLM-L6-v2", "input": "hi", "encoding_format": "int8"})
    assert err.value.param == "encoding_format"


def test_models_listing_follows_the_scopes_authz_requires():
    assert required_scope("/v1/chat/completions", DEFAULT_RULES) == CHAT_SCOPE
    assert required_scope("/v1/models", DEFAULT_RULES) == CHAT_SCOPE
    assert required_scope("/v1/embeddings", DEFAULT_RULES) == EMBEDDING_SCOPE
