"""The router's client for the generation service.

Each model has its own Upstream (breaker and in-flight cap), so a failing full
model opens only its own circuit and the light model keeps answering. A stream
that fails with UNAVAILABLE before its first token is retried with backoff; once a
token arrived, the failure goes to the answer stage, which decides what to do.
"""

import time
from typing import AsyncIterator

import grpc
from llmsuite.generation.v1 import generation_pb2, generation_pb2_grpc

from services.common.channels import upstream_channel, wait_serving
from services.common.context import outgoing_metadata
from services.common.errors import ResourceExhausted, ServiceError, Unavailable, from_rpc_error
from services.common.resilience import Deadline, Incomplete, Upstream
from services.common.sampling import Sampling
from services.router.config import RouterSettings
from services.router.events import Completion, Delta
from services.router.upstream import upstream_for


# Breakers per model name: the tiers' models and the variants operators route to.
_MAX_UPSTREAMS = 64


class ModelUnavailable(Unavailable):
    """A model could not answer now (down, circuit open, overloaded); another may."""


def _unavailable(err: ServiceError, upstream: str) -> ServiceError:
    if isinstance(err, (Unavailable, ResourceExhausted)):
        return ModelUnavailable(f"{upstream} is unavailable", reason=err.reason or "UPSTREAM_UNAVAILABLE",
                                metadata={"upstream": upstream}, retry_after_s=err.retry_after_s or 1.0)
    return err


def _params(sampling: Sampling) -> generation_pb2.SamplingParams:
    params = generation_pb2.SamplingParams(max_tokens=sampling.max_tokens, stop=sampling.stop)
    if sampling.temperature is not None:
        params.temperature = sampling.temperature
    if sampling.top_p is not None:
        params.top_p = sampling.top_p
    if sampling.top_k is not None:
        params.top_k = sampling.top_k
    if sampling.seed is not None:
        params.seed = sampling.seed
    return params


class GenerationClient:
    def __init__(self, settings: RouterSettings):
        self._channel = upstream_channel(settings.generation_url)
        self._stub = generation_pb2_grpc.GenerationServiceStub(self._channel)
        self._settings = settings
        # Known models, and the variants of the rollouts, get their own breaker (so a
        # failing canary opens only its own circuit); any other name a client pins
        # shares one, so clients cannot grow this map.
        self.upstreams = {model: upstream_for(f"generation/{model}", settings)
                          for model in dict.fromkeys((settings.light_model, settings.full_model))}
        self._other = upstream_for("generation/other", settings)

    def upstream(self, model: str) -> Upstream:
        return self.upstreams.get(model, self._other)

    def add_models(self, models: list[str]) -> None:
        """Gives each of `models` (the rollouts' variants, set by operators) its own breaker."""
        for model in models:
            if model not in self.upstreams and len(self.upstreams) < _MAX_UPSTREAMS:
                self.upstreams[model] = upstream_for(f"generation/{model}", self._settings)

    async def models(self, timeout_s: float = 5.0) -> dict[str, bool]:
        """The models generation serves: {name: ready}."""
        try:
            reply = await self._stub.ListModels(generation_pb2.ListModelsRequest(), timeout=timeout_s,
                                                metadata=outgoing_metadata())
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, "generation") from None
        return {model.name: model.ready for model in reply.models}

    async def stream(self, model: str, prompt: str, sampling: Sampling, deadline: Deadline, *,
                     whole: bool = False) -> AsyncIterator[Delta | Completion]:
        """Yields text deltas, then one Completion; ModelUnavailable when the model cannot answer.

        `whole`: the caller waits for the whole answer anyway (a unary Generate), so it comes
        as one Delta from generation's unary Generate: one message through generation and
        Triton instead of one per token, and one chunk for the output check."""
        upstream = self.upstream(model)
        request = generation_pb2.GenerateStreamRequest(model=model, prompt=prompt, sampling=_params(sampling))
        started = time.perf_counter()

        async def answer(timeout: float) -> AsyncIterator[Delta | Completion]:
            final = await self._stub.Generate(
                generation_pb2.GenerateRequest(model=model, prompt=prompt, sampling=request.sampling),
                timeout=timeout, metadata=outgoing_metadata())
            if final.text:
                yield Delta(final.text)
            yield Completion(final.text, final.finish_reason, final.input_tokens, final.output_tokens,
                             final.model, final.model_version, time.perf_counter() - started)

        async def events(timeout: float) -> AsyncIterator[Delta | Completion]:
            call = self._stub.GenerateStream(request, timeout=timeout, metadata=outgoing_metadata())
            try:
                async for message in call:
                    if message.HasField("final"):
                        final = message.final
                        # The status follows the final message: waiting for it lets the
                        # call end OK on both sides instead of as our cancellation.
                        await call.code()
                        yield Completion(final.text, final.finish_reason, final.input_tokens, final.output_tokens,
                                         final.model, final.model_version, time.perf_counter() - started)
                        return
                    if message.text_delta:
                        yield Delta(message.text_delta)
                raise Incomplete
            finally:
                # Leaving early (our caller went away) must end the upstream call too,
                # so generation and Triton stop working for nobody.
                call.cancel()

        try:
            async for event in upstream.stream(answer if whole else events, deadline):
                yield event
        except ServiceError as err:
            raise _unavailable(err, upstream.name) from None

    async def wait_ready(self) -> None:
        await wait_serving(self._channel, "generation")

    async def close(self) -> None:
        await self._channel.close()
