"""Request validation and result mapping, called directly."""

import pytest
from llmsuite.generation.v1 import generation_pb2 as pb

from services.common.errors import InvalidArgument, NotFound, Unavailable
from services.generation.config import GenerationSettings
from services.generation.servicer import finish_reason
from services.common.sampling import Sampling
from services.generation.triton import build_inputs, model_error
from services.generation.validation import validate

SETTINGS = GenerationSettings(max_prompt_chars=100, max_tokens_limit=512)


def test_valid_request_takes_model_defaults():
    job = validate(pb.GenerateRequest(model="full", prompt="hi"), SETTINGS)
    assert job.spec.triton_model == "full"
    assert job.sampling == Sampling(max_tokens=SETTINGS.models["full"].default_max_tokens)


def test_explicit_sampling_is_passed_on():
    params = pb.SamplingParams(max_tokens=5, temperature=0, top_p=0.5, top_k=3, seed=9, stop=["\n"])
    job = validate(pb.GenerateStreamRequest(model="light", prompt="hi", sampling=params), SETTINGS)
    assert job.sampling == Sampling(max_tokens=5, temperature=0, top_p=0.5, top_k=3, seed=9, stop=("\n",))


@pytest.mark.parametrize("request_, field", [
    (pb.GenerateRequest(prompt="hi"), "model"),
    (pb.GenerateRequest(model="light", prompt=""), "prompt"),
    (pb.GenerateRequest(model="light", prompt="x" * 101), "prompt"),
    (pb.GenerateRequest(model="light", prompt="hi", sampling=pb.SamplingParams(max_tokens=513)), "sampling.max_tokens"),
    (pb.GenerateRequest(model="light", prompt="hi", sampling=pb.SamplingParams(max_tokens=-1)), "sampling.max_tokens"),
    (pb.GenerateRequest(model="light", prompt="hi", sampling=pb.SamplingParams(temperature=float("nan"))),
     "sampling.temperature"),
    (pb.GenerateRequest(model="light", prompt="hi", sampling=pb.SamplingParams(top_p=0)), "sampling.top_p"),
    (pb.GenerateRequest(model="light", prompt="hi", sampling=pb.SamplingParams(top_k=-2)), "sampling.top_k"),
    (pb.GenerateRequest(model="light", prompt="hi", sampling=pb.SamplingParams(stop=["s"] * 9)), "sampling.stop"),
    (pb.GenerateRequest(model="light", prompt="hi", sampling=pb.SamplingParams(stop=["ok", "x" * 65])),
     "sampling.stop[1]"),
])
def test_bad_fields_are_named(request_, field):
    with pytest.raises(InvalidArgument) as caught:
        validate(request_, SETTINGS)
    assert caught.value.field == field


def test_unknown_model_lists_known_ones():
    with pytest.raises(NotFound, match="known models: full, full@1, full@2, light"):
        validate(pb.GenerateRequest(model="nope", prompt="hi"), SETTINGS)


def test_settings_reject_a_default_above_the_limit():
    with pytest.raises(ValueError, match="default_max_tokens"):
        GenerationSettings(max_tokens_limit=10)


def test_finish_reason_is_length_when_the_budget_is_used():
    assert finish_reason(10, 10) == pb.FINISH_REASON_LENGTH
    assert finish_reason(3, 10) == pb.FINISH_REASON_STOP


def test_triton_errors_map_to_retryable_or_rejected():
    assert isinstance(model_error("light", "Request for unknown model: 'light' is not found"), Unavailable)
    assert isinstance(model_error("light", "the model is shutting down; retry"), Unavailable)
    rejected = model_error("light", "text_input has 9000 tokens; this model takes at most 2048")
    assert isinstance(rejected, InvalidArgument) and "9000 tokens" in rejected.message


def test_inputs_follow_the_ensemble_interface():
    inputs = {tensor.name(): tensor for tensor in build_inputs("hi", Sampling(max_tokens=3, seed=1, stop=("a",)), True)}
    assert set(inputs) == {"text_input", "max_tokens", "stream", "return_num_input_tokens",
                           "return_num_output_tokens", "seed", "stop_words"}
    assert inputs["seed"].datatype() == "UINT64" and inputs["max_tokens"].datatype() == "INT32"
    assert all(tensor.shape()[0] == 1 for tensor in inputs.values()), "batch dimension first"
