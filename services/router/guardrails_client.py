"""The router's client for the guardrails service: input checks and the streamed output check.

The output check sits between generation and the caller: every generated piece
goes to CheckOutputStream, and only the text guardrails release (redacted where
needed, after the canary check) reaches the caller. Generation is not slowed by
the check: a pump task forwards pieces as they come while released text is read
back concurrently.
"""

import asyncio
import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import AsyncIterator, Sequence

import grpc
from llmsuite.guardrails.v1 import guardrails_pb2, guardrails_pb2_grpc

from services.common.channels import upstream_channel
from services.common.context import outgoing_metadata
from services.common.errors import ServiceError, Unavailable, from_rpc_error
from services.router.config import RouterSettings
from services.router.generation_client import Completion
from services.router.upstream import Deadline, Upstream

log = logging.getLogger(__name__)


@dataclass
class OutputOutcome:
    """What the output check found once the answer ended."""

    findings: list = field(default_factory=list)
    redacted: bool = False
    blocked: bool = False
    reasons: list[str] = field(default_factory=list)
    # The answer went out without the check (guardrails down, tenant fails open).
    unchecked: bool = False
    # Pieces generation produced, for usage when the answer was cut short.
    generated_pieces: int = 0


class GuardrailsClient:
    def __init__(self, settings: RouterSettings):
        self._channel = upstream_channel(settings.guardrails_url)
        self._stub = guardrails_pb2_grpc.GuardrailsServiceStub(self._channel)
        self._cap = settings.guardrails_timeout_s
        self.upstream = Upstream("guardrails", settings)

    async def check_input(self, text: str, *, policy: str, reversible: bool,
                          deadline: Deadline) -> guardrails_pb2.CheckInputResponse:
        request = guardrails_pb2.CheckInputRequest(text=text, policy=policy, reversible=reversible)

        async def run(timeout: float):
            return await self._stub.CheckInput(request, timeout=timeout, metadata=outgoing_metadata())
        return await self.upstream.call(run, deadline, self._cap)

    async def checked(self, source: AsyncIterator[str | Completion], *, policy: str, canaries: Sequence[str],
                      restore_token: bytes, deadline: Deadline,
                      fail_open: bool) -> AsyncIterator[str | Completion | OutputOutcome]:
        """Yields released text, then the Completion (when generation finished), then an OutputOutcome."""
        with ExitStack() as stack:
            try:
                stack.enter_context(self.upstream.slot())
            except Unavailable:
                if not fail_open:
                    raise
                log.warning("output guardrails unavailable; tenant fails open, answer goes unchecked")
                async for event in _unchecked(source):
                    yield event
                return
            async for event in self._checked(source, policy, canaries, restore_token, deadline, fail_open):
                yield event

    async def _checked(self, source, policy, canaries, restore_token, deadline, fail_open):
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        forwarded: list[str] = []
        completions: list[Completion] = []
        grown = asyncio.Event()

        async def pump() -> None:
            async for event in source:
                if isinstance(event, Completion):
                    completions.append(event)
                else:
                    forwarded.append(event)
                    queue.put_nowait(event)
                grown.set()
            queue.put_nowait(None)

        async def requests():
            yield guardrails_pb2.CheckOutputStreamRequest(policy=policy, canaries=list(canaries),
                                                          restore_token=restore_token)
            while (chunk := await queue.get()) is not None:
                yield guardrails_pb2.CheckOutputStreamRequest(chunk=chunk)

        outcome = OutputOutcome()
        call = self._stub.CheckOutputStream(requests(), timeout=deadline.timeout(), metadata=outgoing_metadata())
        pump_task = asyncio.create_task(pump())
        read: asyncio.Future | None = None
        answered = False
        try:
            while True:
                if read is None:
                    read = asyncio.ensure_future(call.read())
                done, _ = await asyncio.wait({read} if pump_task.done() else {read, pump_task},
                                             return_when=asyncio.FIRST_COMPLETED)
                if pump_task in done and pump_task.exception() is not None:
                    raise pump_task.exception()
                if read not in done:
                    continue
                try:
                    response = read.result()
                except grpc.aio.AioRpcError as err:
                    self.upstream.record_error(err.code(), hop_timeout_bound=False)
                    if answered or not fail_open:
                        raise from_rpc_error(err, self.upstream.name) from None
                    log.warning("output guardrails unavailable; tenant fails open, answer goes unchecked")
                    outcome.unchecked = True
                    break
                read = None
                if response is grpc.aio.EOF:
                    raise Unavailable("guardrails ended the output check without a final verdict",
                                      reason="UPSTREAM_UNAVAILABLE", metadata={"upstream": self.upstream.name},
                                      retry_after_s=1.0)
                answered = True
                if response.safe_text:
                    yield response.safe_text
                outcome.findings.extend(response.findings)
                if response.verdict == guardrails_pb2.VERDICT_REDACT:
                    outcome.redacted = True
                if response.verdict == guardrails_pb2.VERDICT_BLOCK:
                    outcome.blocked = True
                    outcome.reasons.extend(response.reasons)
                if response.final:
                    self.upstream.record_success()
                    break
            if outcome.unchecked:
                async for event in _released_unchecked(forwarded, completions, pump_task, grown):
                    yield event
            elif not outcome.blocked:
                await pump_task
                if completions:
                    yield completions[0]
            outcome.generated_pieces = len(forwarded)
            yield outcome
        finally:
            if read is not None:
                read.cancel()
            call.cancel()
            if not pump_task.done():
                pump_task.cancel()
                try:
                    await pump_task
                except (asyncio.CancelledError, ServiceError):
                    pass


    async def close(self) -> None:
        await self._channel.close()


async def _unchecked(source: AsyncIterator[str | Completion]) -> AsyncIterator:
    generated = 0
    async for event in source:
        generated += not isinstance(event, Completion)
        yield event
    yield OutputOutcome(unchecked=True, generated_pieces=generated)


async def _released_unchecked(forwarded: list[str], completions: list[Completion], pump_task: asyncio.Task,
                              grown: asyncio.Event) -> AsyncIterator:
    """Releases what generation produced (so far and from now on) without the check."""
    sent = 0
    while True:
        if sent < len(forwarded):
            text = "".join(forwarded[sent:])
            sent = len(forwarded)
            yield text
            continue
        if pump_task.done():
            pump_task.result()
            break
        grown.clear()
        waiter = asyncio.ensure_future(grown.wait())
        try:
            await asyncio.wait({waiter, pump_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
    if completions:
        yield completions[0]
