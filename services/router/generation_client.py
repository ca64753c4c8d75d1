"""The router's client for the generation service.

Each model has its own Upstream (breaker and in-flight cap), so a failing full
model opens only its own circuit and the light model keeps answering. A stream
that fails with UNAVAILABLE before its first token is retried with backoff; once a
token arrived, the failure goes to the pipeline, which decides what to do.
"""

import asyncio
import time
from dataclasses import dataclass
from typing import AsyncIterator

import grpc
from llmsuite.generation.v1 import generation_pb2, generation_pb2_grpc

from services.common.channels import upstream_channel, wait_serving
from services.common.context import outgoing_metadata
from services.common.errors import ResourceExhausted, ServiceError, Unavailable, from_rpc_error
from services.router.config import RouterSettings
from services.router.metrics import UPSTREAM_RETRIES
from services.router.upstream import Deadline, Upstream
from services.common.sampling import Sampling


class ModelUnavailable(Unavailable):
    """A model could not answer now (down, circuit open, overloaded); another may."""


def _unavailable(err: ServiceError, upstream: str) -> ServiceError:
    if isinstance(err, (Unavailable, ResourceExhausted)):
        return ModelUnavailable(f"{upstream} is unavailable", reason=err.reason or "UPSTREAM_UNAVAILABLE",
                                metadata={"upstream": upstream}, retry_after_s=err.retry_after_s or 1.0)
    return err


@dataclass
class Completion:
    """The final state of a generation stream."""

    text: str
    finish_reason: int
    input_tokens: int
    output_tokens: int
    model: str
    model_version: str
    # Seconds from the first call to the final message, retries included.
    elapsed_s: float = 0.0


class GenerationClient:
    def __init__(self, settings: RouterSettings):
        self._channel = upstream_channel(settings.generation_url)
        self._stub = generation_pb2_grpc.GenerationServiceStub(self._channel)
        self._settings = settings
        # Known models get their own breaker; any other name a client pins shares
        # one, so clients cannot grow this map.
        self.upstreams = {model: Upstream(f"generation/{model}", settings)
                          for model in dict.fromkeys((settings.light_model, settings.full_model))}
        self._other = Upstream("generation/other", settings)

    def upstream(self, model: str) -> Upstream:
        return self.upstreams.get(model, self._other)

    @staticmethod
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

    async def stream(self, model: str, prompt: str, sampling: Sampling,
                     deadline: Deadline) -> AsyncIterator[str | Completion]:
        """Yields text deltas, then one Completion; ModelUnavailable when the model cannot answer."""
        try:
            async for event in self._stream(model, prompt, sampling, deadline):
                yield event
        except ServiceError as err:
            raise _unavailable(err, self.upstream(model).name) from None

    async def _stream(self, model: str, prompt: str, sampling: Sampling,
                      deadline: Deadline) -> AsyncIterator[str | Completion]:
        started = time.perf_counter()
        upstream = self.upstream(model)
        request = generation_pb2.GenerateStreamRequest(model=model, prompt=prompt, sampling=self._params(sampling))
        delays = upstream.retry_delays()
        while True:
            received = False
            with upstream.slot():
                call = self._stub.GenerateStream(request, timeout=deadline.timeout(), metadata=outgoing_metadata())
                try:
                    async for message in call:
                        if message.HasField("final"):
                            final = message.final
                            upstream.record_success()
                            yield Completion(final.text, final.finish_reason, final.input_tokens,
                                             final.output_tokens, final.model, final.model_version,
                                             time.perf_counter() - started)
                            return
                        if message.text_delta:
                            received = True
                            yield message.text_delta
                    upstream.record_error(grpc.StatusCode.UNAVAILABLE, hop_timeout_bound=False)
                    raise Unavailable("generation ended without a final answer", reason="UPSTREAM_UNAVAILABLE",
                                      metadata={"upstream": upstream.name}, retry_after_s=1.0)
                except grpc.aio.AioRpcError as err:
                    upstream.record_error(err.code(), hop_timeout_bound=False)
                    delay = next(delays, None) if err.code() == grpc.StatusCode.UNAVAILABLE and not received else None
                    if delay is None or deadline.remaining() <= delay:
                        raise from_rpc_error(err, upstream.name) from None
                finally:
                    # Leaving early (our caller went away) must end the upstream call too,
                    # so generation and Triton stop working for nobody.
                    call.cancel()
            UPSTREAM_RETRIES.labels(upstream.name).inc()
            await asyncio.sleep(delay)

    async def wait_ready(self) -> None:
        await wait_serving(self._channel, "generation")

    async def close(self) -> None:
        await self._channel.close()
