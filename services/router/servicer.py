"""InferenceService: the request pipeline (minimal path: validate -> generate)."""

import logging
import time
from typing import AsyncIterator

import grpc
from llmsuite.inference.v1 import inference_pb2, inference_pb2_grpc

from services.common.context import request_id_var
from services.common.errors import Unavailable
from services.router.config import RouterSettings
from services.router.generation_client import Completion, GenerationClient
from services.router.prompt import render
from services.router.validation import InferenceRequest, validate

log = logging.getLogger(__name__)

_FINISH = {1: inference_pb2.FINISH_REASON_STOP, 2: inference_pb2.FINISH_REASON_LENGTH}


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, settings: RouterSettings, generation: GenerationClient):
        self._settings = settings
        self._generation = generation

    def _choose_model(self, request: InferenceRequest) -> tuple[str, int]:
        if request.model:
            tier = inference_pb2.TIER_LIGHT if request.model == self._settings.light_model else inference_pb2.TIER_FULL
            return request.model, tier
        if request.tier == inference_pb2.TIER_LIGHT:
            return self._settings.light_model, inference_pb2.TIER_LIGHT
        return self._settings.full_model, inference_pb2.TIER_FULL

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self._settings.request_timeout_s if remaining is None else max(remaining, 0.001)

    async def _run(self, request, context) -> AsyncIterator[str | inference_pb2.GenerateResponse]:
        started = time.perf_counter()
        inference = validate(request, self._settings)
        model, tier = self._choose_model(inference)
        prompt = render(inference.turns)
        generation_started = time.perf_counter()
        completion: Completion | None = None
        async for event in self._generation.stream(model, prompt, inference.sampling, self._timeout(context)):
            if isinstance(event, Completion):
                completion = event
            else:
                yield event
        if completion is None:
            raise Unavailable("generation ended without a final answer", retry_after_s=1.0)
        generation_s = time.perf_counter() - generation_started
        total_s = time.perf_counter() - started
        log.info("answered", extra={"model": completion.model, "input_tokens": completion.input_tokens,
                                    "output_tokens": completion.output_tokens})
        yield inference_pb2.GenerateResponse(
            text=completion.text,
            finish_reason=_FINISH.get(completion.finish_reason, inference_pb2.FINISH_REASON_STOP),
            usage=inference_pb2.Usage(
                input_tokens=completion.input_tokens,
                output_tokens=completion.output_tokens,
                total_tokens=completion.input_tokens + completion.output_tokens,
            ),
            tier=tier,
            model=completion.model,
            model_version=completion.model_version,
            cache_status=inference_pb2.CACHE_STATUS_BYPASS,
            request_id=request_id_var.get(),
            overhead_ms=max(total_s - generation_s, 0.0) * 1000,
        )

    async def Generate(self, request, context):
        async for event in self._run(request, context):
            if isinstance(event, inference_pb2.GenerateResponse):
                return event
        raise Unavailable("no answer was produced", retry_after_s=1.0)

    async def GenerateStream(self, request, context):
        async for event in self._run(request, context):
            if isinstance(event, inference_pb2.GenerateResponse):
                yield inference_pb2.GenerateStreamResponse(final=event)
            else:
                yield inference_pb2.GenerateStreamResponse(text_delta=event)
