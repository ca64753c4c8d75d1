"""The input check: every client turn through guardrails' CheckInput before any model sees it.

A block is INVALID_ARGUMENT with ErrorInfo reason INPUT_BLOCKED; a redaction
replaces the turn's text with guardrails' sanitised one. When guardrails cannot be
reached, the tenant's policy decides: fail closed (GUARDRAILS_UNAVAILABLE), or
answer unchecked (degraded).
"""

import logging

from llmsuite.guardrails.v1 import guardrails_pb2

from services.common.errors import InvalidArgument
from services.common.resilience import Deadline
from services.router.config import TenantSettings
from services.router.guardrails_client import GuardrailsClient
from services.router.metrics import GUARDRAIL_VERDICTS
from services.router.state import UPSTREAM_DOWN, CheckedInput, Report, detail
from services.router.validation import InferenceRequest, Turn

log = logging.getLogger(__name__)

# Guardrails reports a prompt injection as a finding of this entity spanning the
# whole text, whatever its policy then did with it (guardrails.proto, Finding).
INJECTION_ENTITY = "PROMPT_INJECTION"

_VERDICT_NAMES = {guardrails_pb2.VERDICT_ALLOW: "allow", guardrails_pb2.VERDICT_REDACT: "redact",
                  guardrails_pb2.VERDICT_BLOCK: "block"}


def blocked(request: InferenceRequest, index: int, verdict: guardrails_pb2.CheckInputResponse) -> InvalidArgument:
    """The error for a blocked turn: what blocked it, from guardrails' own findings."""
    field = "prompt" if request.from_prompt else f"messages[{index}].content"
    entities = sorted({f.entity for f in verdict.findings if f.action == guardrails_pb2.ACTION_BLOCK})
    if INJECTION_ENTITY not in entities and any(f.entity == INJECTION_ENTITY for f in verdict.findings):
        entities.append(INJECTION_ENTITY)
    return InvalidArgument(
        "the input guardrails blocked this request: " + (detail(verdict.reasons) or "policy violation"),
        field=field, reason="INPUT_BLOCKED",
        metadata={"stage": "input", "findings": detail(entities),
                  "injection_score": f"{verdict.injection_score:.3f}", "reasons": detail(verdict.reasons)})


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
        redacted = False
        restore_token = b""
        for index, turn in enumerate(request.turns):
            if not turn.content.strip():
                continue
            try:
                verdict = await self._guardrails.check_input(
                    turn.content, policy=tenant.guardrails_policy,
                    reversible=tenant.reversible_redaction and index == last, deadline=deadline)
            except UPSTREAM_DOWN:
                deadline.check()
                return self._unchecked(request, tenant, report)
            GUARDRAIL_VERDICTS.labels("input", _VERDICT_NAMES.get(verdict.verdict, "unknown")).inc()
            report.add_findings("input", verdict.findings)
            if verdict.verdict == guardrails_pb2.VERDICT_BLOCK:
                raise blocked(request, index, verdict)
            if verdict.verdict == guardrails_pb2.VERDICT_REDACT:
                redacted = True
                turns[index] = Turn(turn.role, verdict.sanitized_text)
                restore_token = verdict.restore_token or restore_token
        report.verdicts["input"] = "redact" if redacted else "allow"
        return CheckedInput(tuple(turns), redacted, restore_token)

    def _unchecked(self, request: InferenceRequest, tenant: TenantSettings, report: Report) -> CheckedInput:
        """Guardrails cannot be reached: fail closed, or go on unchecked where the tenant fails open."""
        if not tenant.guardrails_fail_open:
            raise self._guardrails.fail_closed("input") from None
        log.warning("input guardrails unavailable; tenant fails open, input goes unchecked")
        report.degrade("guardrails_unavailable")
        report.verdicts["input"] = "unchecked"
        GUARDRAIL_VERDICTS.labels("input", "unchecked").inc()
        return CheckedInput(request.turns)
