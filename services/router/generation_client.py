"""The router's client for the generation service."""

from dataclasses import dataclass
from typing import AsyncIterator

import grpc
from llmsuite.generation.v1 import generation_pb2, generation_pb2_grpc

from services.common.channels import insecure_channel, wait_serving
from services.common.context import outgoing_metadata
from services.common.errors import from_rpc_error
from services.router.validation import Sampling


@dataclass
class Completion:
    """The final state of a generation stream."""

    text: str
    finish_reason: int
    input_tokens: int
    output_tokens: int
    model: str
    model_version: str


class GenerationClient:
    def __init__(self, target: str):
        self._channel = insecure_channel(target)
        self._stub = generation_pb2_grpc.GenerationServiceStub(self._channel)

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
                     timeout: float) -> AsyncIterator[str | Completion]:
        """Yields text deltas, then one Completion."""
        request = generation_pb2.GenerateStreamRequest(model=model, prompt=prompt, sampling=self._params(sampling))
        call = self._stub.GenerateStream(request, timeout=timeout, metadata=outgoing_metadata())
        try:
            async for message in call:
                if message.HasField("final"):
                    final = message.final
                    yield Completion(final.text, final.finish_reason, final.input_tokens, final.output_tokens,
                                     final.model, final.model_version)
                elif message.text_delta:
                    yield message.text_delta
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, "generation") from None
        finally:
            # Leaving early (our caller went away) must end the upstream call too,
            # so generation and Triton stop working for nobody.
            call.cancel()

    async def wait_ready(self) -> None:
        await wait_serving(self._channel, "generation")

    async def close(self) -> None:
        await self._channel.close()
