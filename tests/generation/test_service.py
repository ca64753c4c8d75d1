"""The generation service on a real Triton: answers, streams, errors, cancellation."""

import grpc
import pytest
from grpc_status import rpc_status
from google.rpc import error_details_pb2
from llmsuite.generation.v1 import generation_pb2 as pb
from standin.text import Sampling, complete, count_tokens, fails_on_purpose, natural_length

from tests.generation.support import MAX_PROMPT_CHARS, scrape, standin_answer_range
from tests.harness import assert_grpc_error, poll

pytestmark = pytest.mark.integration

PROMPT = "What does the generation service do with a prompt?"


def expected(model: str, prompt: str, max_tokens: int, sampling: Sampling = Sampling(), stop=()):
    return complete(model, prompt, max_tokens, sampling, standin_answer_range(model), stop)


def field_violations(err: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(err)
    fields = []
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [violation.field for violation in bad.field_violations]
    return fields


@pytest.mark.parametrize("model", ["light", "full"])
def test_generate_returns_the_standin_text_and_token_counts(stub, model):
    reply = stub.Generate(pb.GenerateRequest(model=model, prompt=PROMPT, sampling=pb.SamplingParams(max_tokens=12)),
                          timeout=30)
    answer = expected(model, PROMPT, 12)
    assert reply.text == answer.text
    assert reply.input_tokens == count_tokens(PROMPT)
    assert reply.output_tokens == answer.output_tokens == 12
    assert reply.finish_reason == pb.FINISH_REASON_LENGTH
    assert reply.model == model
    assert reply.model_version == "1"


def test_answer_that_ends_by_itself_finishes_with_stop(stub):
    reply = stub.Generate(pb.GenerateRequest(model="light", prompt=PROMPT, sampling=pb.SamplingParams(max_tokens=500)),
                          timeout=30)
    answer = expected("light", PROMPT, 500)
    assert answer.output_tokens < 500
    assert (reply.text, reply.output_tokens) == (answer.text, answer.output_tokens)
    assert reply.finish_reason == pb.FINISH_REASON_STOP


def test_stream_sends_deltas_then_a_final_with_usage(stub):
    messages = list(stub.GenerateStream(
        pb.GenerateStreamRequest(model="light", prompt=PROMPT, sampling=pb.SamplingParams(max_tokens=10)), timeout=30))
    *deltas, last = messages
    answer = expected("light", PROMPT, 10)
    assert len(deltas) > 1, "the answer should arrive in pieces"
    assert all(message.text_delta and not message.HasField("final") for message in deltas)
    assert last.HasField("final") and last.text_delta == ""
    assert "".join(message.text_delta for message in deltas) == last.final.text == answer.text
    assert (last.final.input_tokens, last.final.output_tokens) == (count_tokens(PROMPT), 10)
    assert last.final.finish_reason == pb.FINISH_REASON_LENGTH


def test_seed_changes_sampled_text_deterministically(stub):
    def run(seed: int) -> str:
        params = pb.SamplingParams(max_tokens=16, temperature=0.8, seed=seed)
        return stub.Generate(pb.GenerateRequest(model="light", prompt=PROMPT, sampling=params), timeout=30).text

    first, again, other = run(1), run(1), run(2)
    assert first == again == expected("light", PROMPT, 16, Sampling(temperature=0.8, seed=1)).text
    assert other != first


def test_stop_string_ends_the_answer_before_it(stub):
    full_text = expected("light", PROMPT, 30).text
    stop = full_text.split(" ")[3]  # a word in the middle of the answer
    params = pb.SamplingParams(max_tokens=30, stop=[f" {stop}"])
    reply = stub.Generate(pb.GenerateRequest(model="light", prompt=PROMPT, sampling=params), timeout=30)
    assert reply.text == full_text[:full_text.index(f" {stop}")]
    assert reply.finish_reason == pb.FINISH_REASON_STOP


def test_list_models_reports_standins_ready(stub):
    models = {model.name: model for model in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert set(models) == {"light", "full", "full@1", "full@2"}
    for name, model in models.items():
        assert model.ready and model.version == ("2" if name == "full@2" else "1")
        assert model.tier == name.split("@")[0]
        assert "stand-in" in model.description.lower()
        assert model.max_context_tokens > 0


@pytest.mark.parametrize("request_, field, fragment", [
    (pb.GenerateRequest(model="light", prompt="   "), "prompt", "prompt is empty"),
    (pb.GenerateRequest(model="light", prompt="x" * (MAX_PROMPT_CHARS + 1)), "prompt", str(MAX_PROMPT_CHARS)),
    (pb.GenerateRequest(model="light", prompt="hi", sampling=pb.SamplingParams(max_tokens=0)),
     "sampling.max_tokens", "max_tokens must be between 1"),
    (pb.GenerateRequest(model="light", prompt="hi", sampling=pb.SamplingParams(max_tokens=100_000)),
     "sampling.max_tokens", "max_tokens must be between 1"),
    (pb.GenerateRequest(model="light", prompt="hi", sampling=pb.SamplingParams(temperature=3)),
     "sampling.temperature", "temperature"),
    (pb.GenerateRequest(model="light", prompt="hi", sampling=pb.SamplingParams(stop=[""])),
     "sampling.stop[0]", "stop strings"),
], ids=["empty-prompt", "prompt-over-limit", "max-tokens-zero", "max-tokens-over-limit", "temperature", "empty-stop"])
def test_bad_input_is_invalid_argument_naming_the_field(stub, request_, field, fragment):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Generate(request_, timeout=10)
    assert_grpc_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, fragment)
    assert field_violations(caught.value) == [field]
    stream_request = pb.GenerateStreamRequest(model=request_.model, prompt=request_.prompt, sampling=request_.sampling)
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.GenerateStream(stream_request, timeout=10))
    assert_grpc_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, fragment)


def test_unknown_model_is_not_found_and_lists_the_known_ones(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Generate(pb.GenerateRequest(model="gpt-17", prompt="hi"), timeout=10)
    assert_grpc_error(caught.value, grpc.StatusCode.NOT_FOUND, "gpt-17", "light", "full")


def test_malformed_request_bytes_are_invalid_argument(channel, stub):
    for method in ("Generate", "GenerateStream"):
        path = f"/llmsuite.generation.v1.GenerationService/{method}"
        # Field 2 (prompt) declared as a 100-byte string with 2 bytes present.
        garbage = b"\x12\x64ab"
        with pytest.raises(grpc.RpcError) as caught:
            if method == "Generate":
                channel.unary_unary(path, request_serializer=None, response_deserializer=None)(garbage, timeout=10)
            else:
                list(channel.unary_stream(path, request_serializer=None, response_deserializer=None)(garbage, timeout=10))
        assert_grpc_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "could not be decoded")
    # And the service keeps serving.
    assert stub.Generate(pb.GenerateRequest(model="light", prompt="hi", sampling=pb.SamplingParams(max_tokens=2)),
                         timeout=10).output_tokens == 2


def test_cancelling_a_stream_cancels_the_triton_request(stub, triton):
    # A prompt whose answer is long enough (on `full`, 4 ms a token) that it is
    # still generating when the cancellation arrives.
    low, high = standin_answer_range("full")
    prompt = next(p for p in (f"Tell me a long story, part {i}." for i in range(200))
                  if natural_length("full", p, Sampling(), (low, high)) > 300)
    cancelled = ("llmsuite_standin_requests_total", (("model", "full"), ("outcome", "cancelled"), ("version", "1")))
    completed = ("llmsuite_standin_requests_total", (("model", "full"), ("outcome", "completed"), ("version", "1")))
    active = ("llmsuite_standin_active_requests", (("model", "full"), ("version", "1")))
    before = scrape(triton.metrics_url)

    call = stub.GenerateStream(pb.GenerateStreamRequest(model="full", prompt=prompt,
                                                        sampling=pb.SamplingParams(max_tokens=1000)), timeout=60)
    assert next(call).text_delta
    assert scrape(triton.metrics_url)[active] == 1
    call.cancel()

    after = poll(lambda: (lambda m: m if m[active] == 0 else None)(scrape(triton.metrics_url)),
                 "Triton's active request count back to 0")
    assert after[cancelled] == before.get(cancelled, 0) + 1, "the model did not see the cancellation"
    assert after[completed] == before.get(completed, 0), "the request ran to completion instead"
    assert after[("nv_inference_pending_request_count", (("model", "full"), ("version", "1")))] == 0


def test_generation_metrics_use_genai_names(stub, generation_metrics_port):
    list(stub.GenerateStream(pb.GenerateStreamRequest(model="light", prompt=PROMPT,
                                                      sampling=pb.SamplingParams(max_tokens=3)), timeout=10))
    samples = scrape(f"http://127.0.0.1:{generation_metrics_port}/metrics")
    model = ("gen_ai_request_model", "light")
    assert samples[("gen_ai_server_time_to_first_token_seconds_count", (model,))] >= 1
    assert samples[("gen_ai_client_token_usage_sum", (model, ("gen_ai_token_type", "output")))] >= 3
    assert samples[("gen_ai_client_token_usage_sum", (model, ("gen_ai_token_type", "input")))] >= count_tokens(PROMPT)
    assert samples[("gen_ai_server_request_duration_seconds_count", (("error_type", ""), model))] >= 1


def test_variant_names_reach_their_triton_versions(stub):
    """full@2 is Triton's full version 2: the same text as version 1 (the stand-in seeds by
    model name), and every prompt the canary fails on purpose is UNAVAILABLE, retries too."""
    prompts = [f"Which variant answers question {n}?" for n in range(12)]
    failing = [p for p in prompts if fails_on_purpose(p, 4)]
    assert 0 < len(failing) < len(prompts)
    params = pb.SamplingParams(max_tokens=8)
    for prompt in prompts:
        baseline = stub.Generate(pb.GenerateRequest(model="full@1", prompt=prompt, sampling=params), timeout=30)
        assert baseline.model == "full@1" and baseline.model_version == "1"
        if prompt in failing:
            for _ in range(2):
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Generate(pb.GenerateRequest(model="full@2", prompt=prompt, sampling=params), timeout=30)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            continue
        canary = stub.Generate(pb.GenerateRequest(model="full@2", prompt=prompt, sampling=params), timeout=30)
        assert canary.model_version == "2" and canary.text == baseline.text == expected("full", prompt, 8).text
