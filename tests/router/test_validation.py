import pytest
from llmsuite.inference.v1 import inference_pb2

from services.common.errors import InvalidArgument
from services.router.config import RouterSettings
from services.router.prompt import render
from services.router.validation import validate

SETTINGS = RouterSettings(max_prompt_chars=100, max_output_tokens=50, default_max_tokens=10, max_messages=3)


def req(**kwargs):
    return inference_pb2.GenerateRequest(**kwargs)


def test_prompt_becomes_one_user_turn_with_default_max_tokens():
    parsed = validate(req(prompt="hello"), SETTINGS)
    assert [(t.role, t.content) for t in parsed.turns] == [("user", "hello")]
    assert parsed.sampling.max_tokens == 10


@pytest.mark.parametrize("request_, field", [
    (req(), "prompt"),
    (req(prompt="   "), "prompt"),
    (req(prompt="x", messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, content="y")]), "prompt"),
    (req(prompt="x" * 101), "prompt"),
    (req(prompt="x", sampling=inference_pb2.SamplingParams(max_tokens=0)), "sampling.max_tokens"),
    (req(prompt="x", sampling=inference_pb2.SamplingParams(max_tokens=51)), "sampling.max_tokens"),
    (req(prompt="x", sampling=inference_pb2.SamplingParams(temperature=2.5)), "sampling.temperature"),
    (req(prompt="x", sampling=inference_pb2.SamplingParams(top_p=0)), "sampling.top_p"),
    (req(prompt="x", sampling=inference_pb2.SamplingParams(stop=[""])), "sampling.stop[0]"),
    (req(prompt="x", sampling=inference_pb2.SamplingParams(stop=["s"] * 9)), "sampling.stop"),
    (req(prompt="x", sampling=inference_pb2.SamplingParams(top_k=1001)), "sampling.top_k"),
    (req(prompt="x", tier=inference_pb2.TIER_CACHE), "tier"),
    (req(messages=[inference_pb2.Message(role=inference_pb2.ROLE_UNSPECIFIED, content="y")]), "messages[0].role"),
    (req(messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, content="y")] * 4), "messages"),
])
def test_invalid_requests_name_the_field(request_, field):
    with pytest.raises(InvalidArgument) as err:
        validate(request_, SETTINGS)
    assert err.value.field == field
    assert err.value.message


def test_client_system_prompt_needs_permission():
    messages = [inference_pb2.Message(role=inference_pb2.ROLE_SYSTEM, content="be evil"),
                inference_pb2.Message(role=inference_pb2.ROLE_USER, content="hi")]
    with pytest.raises(InvalidArgument) as err:
        validate(req(messages=messages), SETTINGS)
    assert err.value.reason == "CLIENT_SYSTEM_PROMPT_NOT_ALLOWED"
    allowed = RouterSettings(allow_client_system_prompt=True)
    assert [t.role for t in validate(req(messages=messages), allowed).turns] == ["system", "user"]


def test_render_ends_with_open_assistant_turn():
    parsed = validate(req(messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, content="a"),
                                    inference_pb2.Message(role=inference_pb2.ROLE_ASSISTANT, content="b"),
                                    inference_pb2.Message(role=inference_pb2.ROLE_USER, content="c")]), SETTINGS)
    text = render(parsed.turns)
    assert text.index("a") < text.index("b") < text.index("c")
    assert text.endswith("<|assistant|>\n")


def test_tenant_policy_can_allow_client_system_prompts():
    from services.router.config import TenantSettings

    messages = [inference_pb2.Message(role=inference_pb2.ROLE_SYSTEM, content="be brief"),
                inference_pb2.Message(role=inference_pb2.ROLE_USER, content="hi")]
    turns = validate(req(messages=messages), SETTINGS, TenantSettings(allow_client_system_prompt=True)).turns
    assert [t.role for t in turns] == ["system", "user"]
    with pytest.raises(InvalidArgument):
        validate(req(messages=messages), RouterSettings(allow_client_system_prompt=True),
                 TenantSettings(allow_client_system_prompt=False))


@pytest.mark.parametrize("request_, field", [
    (req(prompt="x", session_id=""), "session_id"),
    (req(prompt="x", session_id="s" * 200), "session_id"),
    (req(prompt="x", session_id="bad\nid"), "session_id"),
    (req(messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, content="a"),
                   inference_pb2.Message(role=inference_pb2.ROLE_ASSISTANT, content="b")]), "messages[1].role"),
])
def test_session_id_and_last_turn_are_checked(request_, field):
    with pytest.raises(InvalidArgument) as err:
        validate(request_, SETTINGS)
    assert err.value.field == field
