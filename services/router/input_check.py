"""The input check: every client turn through guardrails' CheckInput before any model sees it.

A block is INVALID_ARGUMENT with ErrorInfo reason INPUT_BLOCKED; a redaction
replaces the turn's text with guardrails' sanitised one. A turn in guardrails' flag
band (a PROMPT_INJECTION finding with ACTION_FLAG, whatever the verdict) goes on with
the finding reported, unless the tenant's `on_injection_flag` is `block`. When guardrails cannot be
reached, the tenant's policy decides: fail closed (GUARDRAILS_UNAVAILABLE), or
answer unchecked (degraded).
"""

import logging

from llmsuite.guardrails.v1 import guardrails_pb2

from services.common.errors import InvalidArgument
from services.common.resilience import Deadline
from services.router.config import TenantSettings
from services.router.guardrails_client import GuardrailsClient
from services.router.metrics import GUARDRAIL_VERDICTS, INJECTION_FLAGS
from services.router.state import UPSTREAM_DOWN, CheckedInput, Report, detail
from services.router.validation import InferenceRequest, Turn

log = logging.getLogger(__name__)

# Guardrails reports a prompt injection as a finding of this entity spanning the
# whole text, whatever its policy then did with it (guardrails.proto, Finding).
INJECTION_ENTITY = "PROMPT_INJECTION"

_VERDICT_NAMES = {guardrails_pb2.VERDICT_ALLOW: "allow", guardrails_pb2.VERDICT_REDACT: "redact",
                  guardrails_pb2.VERDICT_BLOCK: "block", guardrails_pb2.VERDICT_FLAG: "flag"}


def flagged(verdict: guardrails_pb2.CheckInputResponse) -> bool:
    """Whether guardrails put the text in its injection flag band (guardrails.proto, VERDICT_FLAG)."""
    return any(f.entity == INJECTION_ENTITY and f.action == guardrails_pb2.ACTION_FLAG for f in verdict.findings)


def blocked(request: InferenceRequest, index: int, verdict: guardrails_pb2.CheckInputResponse, *,
            flag: bool = False) -> InvalidArgument:
    """The error for a blocked turn: what blocked it, from guardrails' own findings.

    `flag`: blocked by the tenant's `on_injection_flag: block`, not by guardrails' verdict.
    """
    field = "prompt" if request.from_prompt else f"messages[{index}].content"
    action = guardrails_pb2.ACTION_FLAG if flag else guardrails_pb2.ACTION_BLOCK
    entities = sorted({f.entity for f in verdict.findings if f.action == action})
    metadata = {"stage": "input", "findings": detail(entities),
                "injection_score": f"{verdict.injection_score:.3f}", "reasons": detail(verdict.reasons)}
    if flag:
        metadata["policy"] = "on_injection_flag=block"
    return InvalidArgument(
        "the input guardrails blocked this request: " + (detail(verdict.reasons) or "policy violation"),
        field=field, reason="INPUT_BLOCKED", metadata=metadata)


class InputCheck:
    def __init__(self, guardrails: GuardrailsClient | None):
        self._guardrails = guardrails

    async def check(self, request: InferenceRequest, tenant: TenantSettings, deadline: Deadline,
                    report: Report) -> CheckedInput:
        """The client's turns as the model may see them; raises on a block."""
        if self._guardrails is None:
            return CheckedInput(request.turns)
        last = len(request.turns) - 1
        turns = list(request.turns)
        redacted = flagged_any = False
        restore_token = b""
        for index, turn in enumerate(request.turns):
            if not turn.content.strip():
                continue
            try:
                # A system turn reaches here only where the tenant accepts client system
                # messages: instructions by design, so never judged as an injection.
                verdict = await self._guardrails.check_input(
                    turn.content, policy=tenant.guardrails_policy,
                    reversible=tenant.reversible_redaction and index == last, deadline=deadline,
                    instructions=turn.role == "system")
            except UPSTREAM_DOWN:
                deadline.check()
                return self._unchecked(request, tenant, report)
            GUARDRAIL_VERDICTS.labels("input", _VERDICT_NAMES.get(verdict.verdict, "unknown")).inc()
            report.add_findings("input", verdict.findings)
            if verdict.verdict == guardrails_pb2.VERDICT_BLOCK:
                raise blocked(request, index, verdict)
            if flagged(verdict):
                self._flagged(request, index, verdict, tenant)
                flagged_any = True
            if verdict.verdict == guardrails_pb2.VERDICT_REDACT:
                redacted = True
                turns[index] = Turn(turn.role, verdict.sanitized_text)
                restore_token = verdict.restore_token or restore_token
        # The audit record's input verdict: a redaction changed what the model saw, so it wins over a flag.
        report.verdicts["input"] = "redact" if redacted else "flag" if flagged_any else "allow"
        return CheckedInput(tuple(turns), redacted, restore_token)

    @staticmethod
    def _flagged(request: InferenceRequest, index: int, verdict: guardrails_pb2.CheckInputResponse,
                 tenant: TenantSettings) -> None:
        """A turn in the flag band: logged and counted (never its text); refused where the tenant says so."""
        outcome = "blocked" if tenant.on_injection_flag == "block" else "passed"
        INJECTION_FLAGS.labels(outcome).inc()
        log.info("input flagged as a possible prompt injection",
                 extra={"injection_score": round(verdict.injection_score, 4), "outcome": outcome})
        if outcome == "blocked":
            raise blocked(request, index, verdict, flag=True)

    def _unchecked(self, request: InferenceRequest, tenant: TenantSettings, report: Report) -> CheckedInput:
        """Guardrails cannot be reached: fail closed, or go on unchecked where the tenant fails open."""
        if not tenant.guardrails_fail_open:
            raise self._guardrails.fail_closed("input") from None
        log.warning("input guardrails unavailable; tenant fails open, input goes unchecked")
        report.degrade("guardrails_unavailable")
        report.verdicts["input"] = "unchecked"
        GUARDRAIL_VERDICTS.labels("input", "unchecked").inc()
        return CheckedInput(request.turns)
