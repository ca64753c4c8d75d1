"""Request validation, for any request: it is accepted whole or refused with InvalidArgument."""

import math

from hypothesis import given
from hypothesis import strategies as st
from llmsuite.inference.v1 import inference_pb2 as pb

from services.common.errors import InvalidArgument
from services.router.config import RouterSettings, TenantSettings
from services.router.validation import validate
from tests.properties import PROPERTIES

SETTINGS = RouterSettings(max_prompt_chars=200, max_output_tokens=64, default_max_tokens=16, max_messages=4)
INT32 = st.integers(-(2**31), 2**31 - 1)
FLOATS = st.floats(width=32)  # proto floats: NaN, infinities and subnormals included
TEXT = st.one_of(st.text(max_size=60), st.sampled_from(["", " ", "\n", "x" * 201]))


def optional(strategy):
    return st.one_of(st.none(), strategy)


@st.composite
def requests(draw):
    sampling = pb.SamplingParams(stop=draw(st.lists(st.text(max_size=70), max_size=10)))
    for name, value in (("max_tokens", draw(optional(INT32))), ("temperature", draw(optional(FLOATS))),
                        ("top_p", draw(optional(FLOATS))), ("top_k", draw(optional(INT32))),
                        ("seed", draw(optional(st.integers(0, 2**64 - 1))))):
        if value is not None:
            setattr(sampling, name, value)
    retrieval = pb.RetrievalOptions(collection=draw(st.sampled_from(["", "docs"])), top_k=draw(INT32))
    if draw(st.booleans()):
        retrieval.score_threshold = draw(FLOATS)
    request = pb.GenerateRequest(
        prompt=draw(TEXT),
        messages=[pb.Message(role=role, content=content) for role, content in
                  draw(st.lists(st.tuples(st.integers(-1, 5), TEXT), max_size=6))],
        model=draw(st.sampled_from(["", "light", "m" * 129])),
        tier=draw(st.integers(-1, 5)), cache_policy=draw(st.integers(-1, 6)),
        sampling=sampling, retrieval=retrieval)
    session = draw(optional(st.text(max_size=80)))
    if session is not None:
        request.session_id = session
    return request


@PROPERTIES
@given(requests(), st.sampled_from([None, TenantSettings(allow_client_system_prompt=True)]))
def test_any_request_is_accepted_whole_or_refused_with_invalid_argument(request, tenant):
    try:
        checked = validate(request, SETTINGS, tenant)
    except InvalidArgument as err:
        assert err.message and err.field  # names what to fix
        return
    assert checked.turns and checked.turns[-1].role == "user"
    assert any(turn.content.strip() for turn in checked.turns if turn.role == "user")
    assert sum(len(turn.content) for turn in checked.turns) <= SETTINGS.max_prompt_chars
    assert tenant is not None or all(turn.role != "system" for turn in checked.turns)
    sampling = checked.sampling
    assert 1 <= sampling.max_tokens <= SETTINGS.max_output_tokens
    assert sampling.temperature is None or (math.isfinite(sampling.temperature) and 0 <= sampling.temperature <= 2)
    assert sampling.top_p is None or 0 < sampling.top_p <= 1
    assert len(sampling.stop) <= 8 and all(1 <= len(word) <= 64 for word in sampling.stop)
    assert checked.tier in (pb.TIER_UNSPECIFIED, pb.TIER_LIGHT, pb.TIER_FULL)
    assert checked.session_id is None or 1 <= len(checked.session_id) <= SETTINGS.max_session_id_chars


@PROPERTIES
@given(st.binary(max_size=200))
def test_any_bytes_that_parse_validate_cleanly(raw):
    request = pb.GenerateRequest()
    try:
        request.ParseFromString(raw)
    except Exception:  # noqa: BLE001 (not a request: the server refuses it before validation)
        return
    try:
        validate(request, SETTINGS)
    except InvalidArgument:
        pass
