"""Helpers shared by the end-to-end tests."""

import grpc
from llmsuite.generation.v1 import generation_pb2, generation_pb2_grpc

from services.router.config import RouterSettings
from services.router.prompt import SecretSource, build
from services.router.validation import Turn
from tests.generation.support import scrape


def direct_generation(stack, prompt: str, request_id: str, model: str,
                      max_tokens: int) -> generation_pb2.GenerateResponse:
    """What the generation service answers for the prompt the router builds.

    The router's prompt has the default tenant's template and a per-request canary
    derived from its key (set by the e2e stack) and the request id, so the test
    can rebuild it exactly.
    """
    settings = RouterSettings(canary_key=stack.overrides["router"]["canary_key"])
    template = settings.templates[settings.tenants["default"].template]
    routed = build(template, (Turn("user", prompt),), SecretSource(settings.canary_key).for_request(request_id))
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.generation}") as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        return stub.Generate(generation_pb2.GenerateRequest(
            model=model, prompt=routed, sampling=generation_pb2.SamplingParams(max_tokens=max_tokens)), timeout=30)


def triton_metrics(stack) -> dict:
    return scrape(f"http://127.0.0.1:{stack.ports.triton_metrics}/metrics")
