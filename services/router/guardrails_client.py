"""The router's client for the guardrails service: thin wrappers of its RPCs behind one Upstream.

What the router does with the verdicts lives in the stages: input_check.py and
output_check.py.
"""

from typing import AsyncIterator, Sequence

from llmsuite.guardrails.v1 import guardrails_pb2, guardrails_pb2_grpc

from services.common.channels import upstream_channel
from services.common.context import outgoing_metadata
from services.common.errors import Unavailable
from services.common.resilience import Deadline, Incomplete
from services.router.config import RouterSettings
from services.router.upstream import upstream_for


def fail_closed(stage: str, retry_after_s: float) -> Unavailable:
    """The error of a request whose tenant fails closed while guardrails cannot check its `stage`."""
    return Unavailable(f"{stage} guardrails are unavailable and this tenant fails closed; retry later",
                       reason="GUARDRAILS_UNAVAILABLE", metadata={"upstream": "guardrails"},
                       retry_after_s=max(retry_after_s, 1.0))


class GuardrailsClient:
    def __init__(self, settings: RouterSettings):
        self._channel = upstream_channel(settings.guardrails_url)
        self._stub = guardrails_pb2_grpc.GuardrailsServiceStub(self._channel)
        self._cap = settings.guardrails_timeout_s
        self.upstream = upstream_for("guardrails", settings)

    async def check_input(self, text: str, *, policy: str, reversible: bool, deadline: Deadline,
                          instructions: bool = False) -> guardrails_pb2.CheckInputResponse:
        request = guardrails_pb2.CheckInputRequest(text=text, policy=policy, reversible=reversible,
                                                   instructions=instructions)
        return await self.upstream.call(
            lambda timeout: self._stub.CheckInput(request, timeout=timeout, metadata=outgoing_metadata()),
            deadline, self._cap)

    def check_output_stream(self, chunks: AsyncIterator[str], *, policy: str, canaries: Sequence[str],
                            restore_token: bytes,
                            deadline: Deadline) -> AsyncIterator[guardrails_pb2.CheckOutputStreamResponse]:
        """CheckOutputStream's responses to `chunks`, up to the final one.

        Not retried: the chunks already sent cannot be sent again.
        """
        async def requests() -> AsyncIterator[guardrails_pb2.CheckOutputStreamRequest]:
            yield guardrails_pb2.CheckOutputStreamRequest(policy=policy, canaries=list(canaries),
                                                          restore_token=restore_token)
            async for chunk in chunks:
                yield guardrails_pb2.CheckOutputStreamRequest(chunk=chunk)

        async def responses(timeout: float) -> AsyncIterator[guardrails_pb2.CheckOutputStreamResponse]:
            call = self._stub.CheckOutputStream(requests(), timeout=timeout, metadata=outgoing_metadata())
            try:
                async for response in call:
                    if response.final:
                        # The status follows the final response: waiting for it lets the
                        # call end OK on both sides instead of as our cancellation.
                        await call.code()
                        yield response
                        return
                    yield response
                raise Incomplete
            finally:
                call.cancel()

        return self.upstream.stream(responses, deadline, retry=False)

    def fail_closed(self, stage: str) -> Unavailable:
        return fail_closed(stage, self.upstream.retry_after_s())

    async def close(self) -> None:
        await self._channel.close()
