"""The output check: a model's answer streamed through guardrails' CheckOutputStream.

Only the text guardrails release (redacted where needed, after the canary check)
reaches the caller. Generation is not slowed by the check: a pump task forwards
each generated piece as it comes while released text is read back at the same
time, and a failure of generation surfaces at once, not when guardrails next answer.

When guardrails cannot be reached before they answered anything, a tenant that
fails open gets the answer unchecked (Verdict.unchecked); any other failure of the
check fails the answer, since held-back text cannot be told apart from safe text.
"""

import asyncio
import logging
from contextlib import aclosing, suppress
from typing import AsyncIterator, Awaitable, Sequence, TypeVar

from llmsuite.guardrails.v1 import guardrails_pb2

from services.common import tracing
from services.common.errors import ServiceError
from services.common.resilience import Deadline
from services.router.events import Completion, Delta, Verdict
from services.router.guardrails_client import GuardrailsClient
from services.router.metrics import GUARDRAIL_VERDICTS
from services.router.state import UPSTREAM_DOWN

log = logging.getLogger(__name__)

T = TypeVar("T")
_END = object()


class _Down(Exception):
    """The check failed on guardrails' side (generation's failures pass as they are)."""


class _Pump:
    """Forwards generation's text to the check as it comes, and keeps what it forwarded."""

    def __init__(self, source: AsyncIterator[Delta | Completion]):
        self.pieces: list[str] = []
        self.completion: Completion | None = None
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._grown = asyncio.Event()
        self.task = asyncio.create_task(self._run(source))

    async def _run(self, source: AsyncIterator[Delta | Completion]) -> None:
        try:
            async for event in source:
                match event:
                    case Delta(text=text):
                        self.pieces.append(text)
                        self._queue.put_nowait(text)
                    case Completion():
                        self.completion = event
                self._grown.set()
            self._queue.put_nowait(None)
        finally:
            self._grown.set()

    async def chunks(self) -> AsyncIterator[str]:
        """The generated text for the check, until generation ended."""
        while (chunk := await self._queue.get()) is not None:
            yield chunk

    async def alongside(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """The items of `items`; generation's failure instead, as soon as it happens."""
        async with aclosing(items):
            while (item := await self._first(anext(items, _END))) is not _END:
                yield item

    async def _first(self, awaitable: Awaitable[T]) -> T:
        waiter = asyncio.ensure_future(awaitable)
        try:
            while not waiter.done():
                await asyncio.wait({waiter} if self.task.done() else {waiter, self.task},
                                   return_when=asyncio.FIRST_COMPLETED)
                if self.task.done() and not self.task.cancelled() and self.task.exception() is not None:
                    raise self.task.exception()
            return waiter.result()
        finally:
            if not waiter.done():
                waiter.cancel()
                # Let it unwind before anyone touches the stream it was reading.
                await asyncio.wait({waiter})

    async def rest(self) -> AsyncIterator[str]:
        """Everything generated, from the start and as it comes, unchecked."""
        sent = 0
        while True:
            if sent < len(self.pieces):
                text = "".join(self.pieces[sent:])
                sent = len(self.pieces)
                yield text
                continue
            if self.task.done():
                self.task.result()
                return
            self._grown.clear()
            await self._grown.wait()

    async def stop(self) -> None:
        if not self.task.done():
            self.task.cancel()
            with suppress(asyncio.CancelledError, ServiceError):
                await self.task
        elif not self.task.cancelled():
            # Retrieved, so an answer cut by a block does not log a failure nobody waits for.
            self.task.exception()


def _note(verdict: Verdict, response: guardrails_pb2.CheckOutputStreamResponse) -> None:
    verdict.findings.extend(response.findings)
    if response.verdict == guardrails_pb2.VERDICT_REDACT:
        verdict.redacted = True
    if response.verdict == guardrails_pb2.VERDICT_BLOCK:
        verdict.blocked = True
        verdict.reasons.extend(response.reasons)


async def _unguarded(source: AsyncIterator[Delta | Completion]) -> AsyncIterator[Delta | Verdict]:
    """The answer as generated, on a router without guardrails."""
    verdict = Verdict()
    async for event in source:
        match event:
            case Delta():
                verdict.generated_pieces += 1
                yield event
            case Completion():
                verdict.completion = event
    yield verdict


class OutputCheck:
    def __init__(self, guardrails: GuardrailsClient | None):
        self._guardrails = guardrails

    def run(self, source: AsyncIterator[Delta | Completion], *, policy: str, canaries: Sequence[str],
            restore_token: bytes, deadline: Deadline, fail_open: bool) -> AsyncIterator[Delta | Verdict]:
        """Yields released text, then the Verdict (with generation's Completion unless the answer was cut)."""
        if self._guardrails is None:
            return _unguarded(source)
        return self._checked(source, policy, canaries, restore_token, deadline, fail_open)

    async def _checked(self, source: AsyncIterator[Delta | Completion], policy: str, canaries: Sequence[str],
                       restore_token: bytes, deadline: Deadline, fail_open: bool) -> AsyncIterator[Delta | Verdict]:
        # Generation starts first, outside the output check's span: in the trace the two
        # run side by side, as they do.
        pump = _Pump(source)
        verdict = Verdict()
        answered = False
        try:
            with tracing.span("output check") as span:
                try:
                    async with aclosing(pump.alongside(self._responses(pump.chunks(), policy, canaries,
                                                                       restore_token, deadline))) as responses:
                        async for response in responses:
                            answered = True
                            if response.safe_text:
                                yield Delta(response.safe_text)
                            _note(verdict, response)
                except _Down:
                    deadline.check()
                    if answered or not fail_open:
                        raise self._guardrails.fail_closed("output") from None
                    log.warning("output guardrails unavailable; tenant fails open, answer goes unchecked")
                    verdict.unchecked = True
                span.set_attribute("llmsuite.guardrails.verdict", verdict.outcome)
            if verdict.unchecked:
                async for text in pump.rest():
                    yield Delta(text)
            elif not verdict.blocked:
                await pump.task
            if not verdict.blocked:
                verdict.completion = pump.completion
            verdict.generated_pieces = len(pump.pieces)
            GUARDRAIL_VERDICTS.labels("output", verdict.outcome).inc()
            yield verdict
        finally:
            await pump.stop()

    async def _responses(self, chunks: AsyncIterator[str], policy: str, canaries: Sequence[str], restore_token: bytes,
                         deadline: Deadline) -> AsyncIterator[guardrails_pb2.CheckOutputStreamResponse]:
        try:
            async for response in self._guardrails.check_output_stream(
                    chunks, policy=policy, canaries=canaries, restore_token=restore_token, deadline=deadline):
                yield response
        except UPSTREAM_DOWN as err:
            raise _Down(err.message) from err
