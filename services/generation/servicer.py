"""GenerationService: validates, runs the request on Triton, reports usage and metrics."""

import asyncio
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import AsyncIterator

import grpc
from llmsuite.generation.v1 import generation_pb2, generation_pb2_grpc

from services.common import tracing
from services.common.errors import ServiceError
from services.common.resilience import Deadline
from services.common.sampling import Sampling
from services.generation import metrics
from services.generation.config import GenerationSettings
from services.generation.triton import Chunk, TritonGenerator
from services.generation.validation import Job, validate

log = logging.getLogger(__name__)

# Warm-up asks for two tokens: enough to run the decoding loop once.
_WARM_UP = Sampling(max_tokens=2)


@dataclass
class _Progress:
    """What a finished generation reports."""

    parts: list[str] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    model_version: str = ""


def finish_reason(output_tokens: int, max_tokens: int) -> int:
    # The TensorRT-LLM interface does not say why generation ended; an answer that
    # used its whole budget was cut there, any shorter one ended by itself or on a
    # stop string.
    if output_tokens >= max_tokens:
        return generation_pb2.FINISH_REASON_LENGTH
    return generation_pb2.FINISH_REASON_STOP


def _chat_span(job: Job):
    """The GenAI span of one generation on Triton (a client span: Triton's own spans, when it
    exports them, are its children)."""
    return tracing.span(f"chat {job.model}", tracing.chat(job.model, job.sampling.max_tokens),
                        kind=tracing.SpanKind.CLIENT)


def _record_usage(span, response: generation_pb2.GenerateResponse) -> None:
    tracing.record_usage(span, response.input_tokens, response.output_tokens,
                         generation_pb2.FinishReason.Name(response.finish_reason))


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    def __init__(self, settings: GenerationSettings, triton: TritonGenerator):
        self._settings = settings
        self._triton = triton

    def _deadline(self, context: grpc.aio.ServicerContext) -> Deadline:
        remaining = context.time_remaining()
        limit = self._settings.request_timeout_s
        return Deadline(limit if remaining is None else min(remaining, limit))

    async def _run(self, job: Job, progress: _Progress, deadline: Deadline, stream: bool) -> AsyncIterator[str]:
        """Yields text pieces and fills `progress`; records the GenAI metrics."""
        started = time.perf_counter()
        first_at: float | None = None
        error_type = ""
        try:
            chunks = self._triton.generate(job.model, job.spec, job.prompt, job.sampling, stream=stream,
                                           deadline=deadline)
            async with aclosing(chunks):
                async for chunk in chunks:
                    if first_at is None:
                        first_at = time.perf_counter()
                        # Without streaming the first response is the whole answer.
                        if stream:
                            metrics.TIME_TO_FIRST_TOKEN.labels(job.model).observe(first_at - started)
                    self._account(chunk, progress)
                    if chunk.text:
                        progress.parts.append(chunk.text)
                        yield chunk.text
        except ServiceError as err:
            error_type = err.code.name
            raise
        except asyncio.CancelledError:
            error_type = "CANCELLED"
            raise
        except Exception as err:
            error_type = type(err).__name__
            raise
        finally:
            elapsed = time.perf_counter() - started
            metrics.REQUEST_DURATION.labels(job.model, error_type).observe(elapsed)
            if not error_type:
                metrics.TOKEN_USAGE.labels(job.model, "input").observe(progress.input_tokens)
                metrics.TOKEN_USAGE.labels(job.model, "output").observe(progress.output_tokens)
                if stream and first_at is not None and progress.output_tokens > 1:
                    metrics.TIME_PER_OUTPUT_TOKEN.labels(job.model).observe(
                        (time.perf_counter() - first_at) / (progress.output_tokens - 1))

    @staticmethod
    def _account(chunk: Chunk, progress: _Progress) -> None:
        if chunk.input_tokens is not None:
            progress.input_tokens = chunk.input_tokens
        if chunk.output_tokens is not None:
            progress.output_tokens = chunk.output_tokens
        if chunk.model_version:
            progress.model_version = chunk.model_version

    def _final(self, job: Job, progress: _Progress) -> generation_pb2.GenerateResponse:
        return generation_pb2.GenerateResponse(
            text="".join(progress.parts),
            finish_reason=finish_reason(progress.output_tokens, job.sampling.max_tokens),
            input_tokens=progress.input_tokens,
            output_tokens=progress.output_tokens,
            model=job.model,
            model_version=progress.model_version or job.spec.version,
        )

    async def Generate(self, request, context):
        job = validate(request, self._settings)
        progress = _Progress()
        with _chat_span(job) as span:
            async for _ in self._run(job, progress, self._deadline(context), stream=False):
                pass
            response = self._final(job, progress)
            _record_usage(span, response)
        return response

    async def GenerateStream(self, request, context):
        job = validate(request, self._settings)
        progress = _Progress()
        with _chat_span(job) as span:
            async for text in self._run(job, progress, self._deadline(context), stream=True):
                yield generation_pb2.GenerateStreamResponse(text_delta=text)
            final = self._final(job, progress)
            _record_usage(span, final)
        yield generation_pb2.GenerateStreamResponse(final=final)

    async def warm_up(self) -> None:
        """Runs one short generation on every model, retrying until Triton answers.

        The service stays NOT_SERVING until this returns, so nobody is routed to a
        replica whose Triton is down or whose models are not loaded.
        """
        for name, spec in self._settings.models.items():
            delay, attempt = 0.1, 0
            while True:
                attempt += 1
                try:
                    chunks = self._triton.generate(name, spec, self._settings.warm_up_prompt, _WARM_UP,
                                                   stream=True, deadline=Deadline(self._settings.request_timeout_s))
                    async with aclosing(chunks):
                        async for _ in chunks:
                            pass
                    log.info("model %s warmed up", name, extra={"model": name, "attempts": attempt})
                    break
                except ServiceError as err:
                    # The first failure and then every tenth: Triton may take minutes
                    # to load engines, and the log should not fill with the wait.
                    if attempt == 1 or attempt % 10 == 0:
                        log.warning("warm-up of %s failed (attempt %d): %s; retrying", name, attempt,
                                    err.message, extra={"model": name})
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)

    async def ListModels(self, request, context):
        names = list(self._settings.models)
        specs = [self._settings.models[name] for name in names]
        timeout = self._settings.readiness_timeout_s
        statuses = await asyncio.gather(*(self._triton.model_status(spec, timeout) for spec in specs))
        # A model without a configured description is described by its Triton config,
        # so the answer matches the repository Triton serves (real models or stand-ins).
        descriptions = await asyncio.gather(*(
            self._description(spec, timeout) for spec in specs))
        return generation_pb2.ListModelsResponse(models=[
            generation_pb2.ModelInfo(
                name=name, version=version, tier=spec.tier, ready=ready, description=description,
                max_context_tokens=spec.max_context_tokens)
            for name, (ready, version), spec, description in zip(names, statuses, specs, descriptions)
        ])

    async def _description(self, spec, timeout_s: float) -> str:
        return spec.description or await self._triton.model_description(spec, timeout_s)
