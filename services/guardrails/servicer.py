"""gRPC servicer: validates requests, resolves the tenant's policy, maps outcomes to protos."""

import logging
from typing import AsyncIterator

from llmsuite.guardrails.v1 import guardrails_pb2 as pb
from llmsuite.guardrails.v1 import guardrails_pb2_grpc

from services.common.context import request_id_var, tenant_var
from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.guardrails.actions import Finding
from services.guardrails.checker import Guard, Outcome, Verdict
from services.guardrails.config import Action, GuardrailsSettings
from services.guardrails.stream import OutputStream, StreamStep
from services.guardrails.vault import RestoreTokenError, RestoreVault

log = logging.getLogger(__name__)

_VERDICTS = {Verdict.ALLOW: pb.VERDICT_ALLOW, Verdict.REDACT: pb.VERDICT_REDACT, Verdict.BLOCK: pb.VERDICT_BLOCK,
             Verdict.FLAG: pb.VERDICT_FLAG}
_ACTIONS = {Action.ALLOW: pb.ACTION_ALLOW, Action.REDACT: pb.ACTION_REDACT, Action.MASK: pb.ACTION_MASK,
            Action.HASH: pb.ACTION_HASH, Action.BLOCK: pb.ACTION_BLOCK, Action.FLAG: pb.ACTION_FLAG}
_MAX_CANARIES = 32
_MAX_CANARY_CHARS = 256
_MAX_TOKEN_BYTES = 1 << 20


def _findings(findings: list[Finding]) -> list[pb.Finding]:
    return [pb.Finding(entity=f.entity, start=f.start, end=f.end, score=f.score, action=_ACTIONS[f.action])
            for f in findings]


class GuardrailsServicer(guardrails_pb2_grpc.GuardrailsServiceServicer):
    def __init__(self, settings: GuardrailsSettings, vault: RestoreVault, guard: Guard | None = None):
        self._settings = settings
        self._vault = vault
        self._ready_guard = guard

    def ready(self, guard: Guard) -> None:
        """Called once the models are loaded (health turns SERVING right after)."""
        self._ready_guard = guard

    @property
    def _guard(self) -> Guard:
        if self._ready_guard is None:
            raise Unavailable("guardrails is still loading its models; retry shortly", retry_after_s=1.0)
        return self._ready_guard

    def _check_text(self, text: str, *, allow_empty: bool) -> None:
        if not text and not allow_empty:
            raise InvalidArgument("text is empty; send the text to check", field="text")
        if len(text) > self._settings.max_text_chars:
            raise InvalidArgument(f"text has {len(text)} characters, over the limit of "
                                  f"{self._settings.max_text_chars} (setting guardrails.max_text_chars)",
                                  field="text")

    def _canaries(self, canaries) -> tuple[str, ...]:
        if len(canaries) > _MAX_CANARIES or any(len(c) > _MAX_CANARY_CHARS for c in canaries):
            raise InvalidArgument(f"send at most {_MAX_CANARIES} canaries of at most {_MAX_CANARY_CHARS} "
                                  "characters each", field="canaries")
        return tuple(canaries)

    def _restore_map(self, token: bytes) -> dict[str, str] | None:
        if not token:
            return None
        if len(token) > _MAX_TOKEN_BYTES:
            raise InvalidArgument("restore_token is too long to be a token from CheckInput", field="restore_token")
        try:
            return self._vault.open(token, request_id_var.get(), tenant_var.get())
        except RestoreTokenError as err:
            raise InvalidArgument(str(err), field="restore_token") from None

    async def CheckInput(self, request: pb.CheckInputRequest, context) -> pb.CheckInputResponse:
        self._check_text(request.text, allow_empty=False)
        tenant = tenant_var.get()
        policy = self._guard.resolve_policy(tenant, request.policy)
        if request.reversible and not policy.reversible:
            raise FailedPrecondition("this tenant's guardrails policy does not allow reversible redaction; "
                                     "send reversible=false", reason="REVERSIBLE_NOT_ALLOWED")
        outcome = await self._guard.check_input(request.text, policy, tenant, instructions=request.instructions)
        response = pb.CheckInputResponse(
            verdict=_VERDICTS[outcome.verdict], sanitized_text=outcome.text, findings=_findings(outcome.findings),
            injection_score=outcome.injection_score, reasons=outcome.reasons)
        if request.reversible and outcome.verdict is Verdict.REDACT and outcome.placeholders.mapping:
            response.restore_token = self._vault.seal(outcome.placeholders.mapping, request_id_var.get(), tenant)
        return response

    async def CheckOutput(self, request: pb.CheckOutputRequest, context) -> pb.CheckOutputResponse:
        self._check_text(request.text, allow_empty=True)
        canaries = self._canaries(request.canaries)
        tenant = tenant_var.get()
        policy = self._guard.resolve_policy(tenant, request.policy)
        restore_map = self._restore_map(request.restore_token)
        outcome: Outcome = await self._guard.check_output_async(request.text, policy, tenant, canaries, restore_map)
        return pb.CheckOutputResponse(
            verdict=_VERDICTS[outcome.verdict], sanitized_text=outcome.text, findings=_findings(outcome.findings),
            reasons=outcome.reasons, canary_leaked=outcome.canary_leaked)

    async def CheckOutputStream(self, request_iterator: AsyncIterator[pb.CheckOutputStreamRequest],
                                context) -> AsyncIterator[pb.CheckOutputStreamResponse]:
        stream: OutputStream | None = None
        async for request in request_iterator:
            if stream is None:
                tenant = tenant_var.get()
                policy = self._guard.resolve_policy(tenant, request.policy)
                stream = OutputStream(
                    self._guard, policy, tenant, self._canaries(request.canaries),
                    self._restore_map(request.restore_token), self._settings.stream_window_chars,
                    self._settings.stream_max_hold_chars, self._settings.max_stream_chars)
            if not request.chunk:
                continue
            step = stream.feed(request.chunk)
            if step is not None and (step.safe_text or step.findings or step.final):
                yield self._step(step)
                if step.final:
                    return
        # No message at all is an empty answer, which is safe.
        yield self._step(stream.finish() if stream else StreamStep(final=True))

    @staticmethod
    def _step(step: StreamStep) -> pb.CheckOutputStreamResponse:
        return pb.CheckOutputStreamResponse(safe_text=step.safe_text, findings=_findings(step.findings),
                                            verdict=_VERDICTS[step.verdict], reasons=step.reasons, final=step.final)
