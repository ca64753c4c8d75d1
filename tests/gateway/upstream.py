"""A real InferenceService for the edge tests that reports what reached it.

Envoy's behaviour (identity headers set, spoofed ones stripped, which replica got a
call) is what the gateway tests check, so this upstream answers with the identity
metadata it received and its replica name instead of generating text. It runs on
the suite's own server runtime: `python -m tests.gateway.upstream`.

Prompts can ask for a failure, so that the edge's error handling is tested against
the suite's real error mapping: `fail:<CODE>` fails the call at once, and
`fail-after:<N>:<CODE>` (streams) fails it after N text deltas.
"""

import asyncio
import json

from llmsuite.inference.v1 import inference_pb2, inference_pb2_grpc
from pydantic import Field

from services.common import context as ctx
from services.common.config import ServerSettings
from services.common.errors import InvalidArgument, ResourceExhausted, ServiceError, Unavailable
from services.common.server import Service, main


class UpstreamSettings(ServerSettings):
    replica: str = Field("upstream", description="Name reported in every answer.")


FAILURES = {
    "INVALID_ARGUMENT": lambda: InvalidArgument("the test upstream refuses this prompt", field="prompt",
                                                reason="TEST_REFUSED"),
    "UNAVAILABLE": lambda: Unavailable("the test upstream is unavailable", reason="TEST_UNAVAILABLE",
                                       retry_after_s=2.0),
    "RESOURCE_EXHAUSTED": lambda: ResourceExhausted("the test upstream is out of quota", reason="TEST_QUOTA",
                                                    retry_after_s=3.0),
}


def requested_failure(prompt: str) -> tuple[int, ServiceError] | None:
    """(deltas before the failure, the error) when the prompt asks for one."""
    if prompt.startswith("fail:"):
        return 0, FAILURES[prompt.removeprefix("fail:")]()
    if prompt.startswith("fail-after:"):
        count, code = prompt.removeprefix("fail-after:").split(":")
        return int(count), FAILURES[code]()
    return None


def prompt_of(request) -> str:
    """The prompt, or the last message of a conversation (as the OpenAI API sends it)."""
    return request.prompt or (request.messages[-1].content if request.messages else "")


class EchoInference(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, replica: str):
        self._replica = replica

    def _answer(self, request) -> inference_pb2.GenerateResponse:
        seen = {"replica": self._replica, "tenant": ctx.tenant_var.get(), "key_id": ctx.key_id_var.get(),
                "scopes": ctx.scopes_var.get(), "prompt": prompt_of(request)}
        words = len(prompt_of(request).split())
        return inference_pb2.GenerateResponse(
            text=json.dumps(seen), model=self._replica, request_id=ctx.request_id_var.get(),
            finish_reason=inference_pb2.FINISH_REASON_STOP,
            usage=inference_pb2.Usage(input_tokens=words, output_tokens=words, total_tokens=2 * words))

    async def Generate(self, request, context):
        failure = requested_failure(prompt_of(request))
        if failure:
            raise failure[1]
        return self._answer(request)

    async def GenerateStream(self, request, context):
        failure = requested_failure(prompt_of(request))
        if failure:
            for index in range(failure[0]):
                yield inference_pb2.GenerateStreamResponse(text_delta=f"part {index} ")
            raise failure[1]
        # One delta per word, paced so that streams are in flight long enough
        # for the tests to kill a replica under them.
        for word in prompt_of(request).split():
            yield inference_pb2.GenerateStreamResponse(text_delta=word + " ")
            await asyncio.sleep(0.01)
        yield inference_pb2.GenerateStreamResponse(final=self._answer(request))


def build_service(settings: UpstreamSettings) -> Service:
    return Service(
        name="upstream", settings=settings,
        service_names=[inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name],
        register=lambda server: inference_pb2_grpc.add_InferenceServiceServicer_to_server(
            EchoInference(settings.replica), server),
    )


if __name__ == "__main__":
    main("upstream", UpstreamSettings, build_service)
