"""The real CPU model (SmolLM2-135M-Instruct on llama.cpp) over the whole stack:
client -> Envoy -> router -> generation -> Triton, as `make run` serves it."""

import re
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from llmsuite.generation.v1 import generation_pb2, generation_pb2_grpc
from llmsuite.inference.v1 import inference_pb2, inference_pb2_grpc

from services.stack.stack import Ports, Stack
from tests.e2e.conftest import _AddMetadata
from tests.generation.support import scrape
from tests.harness import poll
from tests.models.tokenizer import Tokenizer
from tests.stack_fixtures import LLM_MODEL_REPOSITORY

QUESTION = "What is the capital of France?"
ENGLISH = {"the", "is", "of", "a", "and", "in", "to", "it", "capital", "city"}
# Eight different questions, each answered twice: one at a time, then all at once.
QUESTIONS = ["Name three HTTP methods.", "What is a KV cache?", "Who wrote Hamlet?", "Why is the sky blue?",
             "What is photosynthesis?", "How does a hash table work?", "What is a token bucket?",
             "What does a compiler do?"]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def llm_stack(tmp_path_factory):
    suite = Stack(ports=Ports.free(), var_dir=tmp_path_factory.mktemp("llm-stack"),
                  model_repository=LLM_MODEL_REPOSITORY)
    suite.start()
    yield suite
    suite.stop()


@pytest.fixture(scope="module")
def inference(llm_stack):
    with grpc.insecure_channel(f"127.0.0.1:{llm_stack.ports.envoy}") as channel:
        keyed = grpc.intercept_channel(channel, _AddMetadata((("authorization", f"Bearer {llm_stack.api_key}"),)))
        yield inference_pb2_grpc.InferenceServiceStub(keyed)


@pytest.fixture(scope="module")
def tokenizer():
    tokens = Tokenizer()
    yield tokens
    tokens.close()


def stream(inference, prompt: str, **sampling) -> tuple[list[str], inference_pb2.GenerateResponse]:
    messages = list(inference.GenerateStream(inference_pb2.GenerateStreamRequest(
        prompt=prompt, tier=inference_pb2.TIER_LIGHT, cache_policy=inference_pb2.CACHE_POLICY_BYPASS,
        sampling=inference_pb2.SamplingParams(temperature=0, **sampling)), timeout=60))
    assert messages[-1].HasField("final")
    return [m.text_delta for m in messages[:-1]], messages[-1].final


@pytest.fixture(scope="module")
def answer(inference):
    return stream(inference, QUESTION, max_tokens=48)


def test_the_real_model_streams_an_english_answer_counted_by_its_tokenizer(inference, tokenizer):
    prompt = "Explain what a token bucket rate limiter does."
    deltas, final = stream(inference, prompt, max_tokens=96)
    # The output check holds back a window of text that could still be part of a
    # secret, so only a long answer arrives in several pieces.
    assert "".join(deltas) == final.text and len(deltas) > 1
    words = re.findall(r"[A-Za-z']+", final.text.lower())
    assert len(words) >= 10 and len(ENGLISH & set(words)) >= 2, final.text
    assert final.model == "light" and final.tier == inference_pb2.TIER_LIGHT
    assert final.usage.output_tokens == tokenizer.count(final.text)
    assert final.usage.input_tokens > tokenizer.count(prompt)  # the router's template and fences too


def test_a_short_answer_is_right_and_counted(answer, tokenizer):
    final = answer[1]
    assert "Paris" in final.text
    assert final.usage.output_tokens == tokenizer.count(final.text)
    assert final.finish_reason == inference_pb2.FINISH_REASON_STOP


def test_max_tokens_cuts_the_answer_there(inference, tokenizer):
    _, final = stream(inference, "Write a long story about a dragon who learns to sail.", max_tokens=5)
    assert final.usage.output_tokens == 5 == tokenizer.count(final.text)
    assert final.finish_reason == inference_pb2.FINISH_REASON_LENGTH


def test_the_answer_ends_before_a_stop_string(inference, answer):
    whole = answer[1].text
    words = re.findall(r"[A-Za-z]{4,}", whole)
    assert len(words) >= 2, whole
    stop = words[1]  # a word inside the greedy answer, not its first
    _, final = stream(inference, QUESTION, max_tokens=48, stop=[stop])
    assert stop not in final.text
    assert final.text == whole[:whole.index(stop)].rstrip() or final.text == whole[:whole.index(stop)]


def _triton_metric(stack, name: str, **labels) -> float:
    """The sum of the samples of `name` that carry `labels` (over every model version)."""
    samples = scrape(f"http://127.0.0.1:{stack.ports.triton_metrics}/metrics")
    return sum(value for (sample, pairs), value in samples.items()
               if sample == name and set(labels.items()) <= set(pairs))


def test_a_cancelled_stream_frees_its_slot_in_the_engine(llm_stack, inference):
    cancelled_before = _triton_metric(llm_stack, "llmsuite_llm_requests_total", model="light", outcome="cancelled")
    call = inference.GenerateStream(inference_pb2.GenerateStreamRequest(
        prompt="Write a very long story about a lighthouse keeper and the sea.", tier=inference_pb2.TIER_LIGHT,
        cache_policy=inference_pb2.CACHE_POLICY_BYPASS, sampling=inference_pb2.SamplingParams(max_tokens=1500)),
        timeout=120)
    assert next(call).text_delta
    assert _triton_metric(llm_stack, "llmsuite_llm_active_requests", model="light") == 1
    call.cancel()

    def freed():
        slots = _triton_metric(llm_stack, "llmsuite_llm_engine_requests", model="light", state="processing")
        active = _triton_metric(llm_stack, "llmsuite_llm_active_requests", model="light")
        return slots == 0 and active == 0

    # 1,500 tokens take far longer than this wait: only a cancellation frees the slot in time.
    poll(freed, "llama.cpp's busy slots and the model's active requests back to 0", timeout=5)
    assert _triton_metric(llm_stack, "llmsuite_llm_requests_total", model="light",
                          outcome="cancelled") == cancelled_before + 1


def test_eight_concurrent_requests_finish_sooner_than_eight_in_turn_with_the_same_answers(llm_stack):
    with grpc.insecure_channel(f"127.0.0.1:{llm_stack.ports.generation}") as channel:
        generation = generation_pb2_grpc.GenerationServiceStub(channel)

        def ask(question: str) -> str:
            return generation.Generate(generation_pb2.GenerateRequest(
                model="light", prompt=question,
                sampling=generation_pb2.SamplingParams(max_tokens=48, temperature=0)), timeout=120).text

        started = time.perf_counter()
        in_turn = [ask(question) for question in QUESTIONS]
        in_turn_s = time.perf_counter() - started
        started = time.perf_counter()
        with ThreadPoolExecutor(len(QUESTIONS)) as pool:
            together = list(pool.map(ask, QUESTIONS))
        together_s = time.perf_counter() - started
    assert together_s < in_turn_s, f"8 concurrent took {together_s:.2f}s, 8 in turn {in_turn_s:.2f}s"
    # Greedy answers do not depend on what else shares the engine's batch.
    assert together == in_turn


def test_list_models_describes_the_real_model(llm_stack):
    with grpc.insecure_channel(f"127.0.0.1:{llm_stack.ports.generation}") as channel:
        models = generation_pb2_grpc.GenerationServiceStub(channel).ListModels(
            generation_pb2.ListModelsRequest(), timeout=10).models
    assert {m.name for m in models} == {"light", "full", "full@1", "full@2"} and all(m.ready for m in models)
    assert all("SmolLM2-135M-Instruct" in m.description and "stand-in" not in m.description.lower()
               for m in models)
