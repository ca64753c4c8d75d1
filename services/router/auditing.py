"""The router's audit records: one per request (from finish, or from the pipeline when a
request fails) and one per admin action, handed to the shared audit log (services/audit).

A record says who asked (tenant, key id, request id), what served it (model,
variant, template version, tier, cache status), what it cost (tokens, USD), what
the guardrails decided (verdict and finding types per stage) and how it ended. Text
never goes in: prompt, answer, end-user id and session id appear only as keyed
HMACs (audit_hmac_key), and no credential ever reaches the router. Building a
record is a few dict operations and two HMACs; writing is the log's thread.
"""

import asyncio
import json
import logging
from typing import Iterable

from llmsuite.inference.v1 import inference_pb2

from services.audit.fingerprint import Fingerprints
from services.audit.log import AuditLog, utc_now
from services.common.context import key_id_var, request_id_var, tenant_var
from services.common.errors import ServiceError
from services.router.events import Answer
from services.router.state import TIER_NAMES, RequestState

log = logging.getLogger(__name__)

AUTOMATIC = "automatic"


def status_name(err: BaseException) -> str:
    if isinstance(err, ServiceError):
        return err.code.name
    return "CANCELLED" if isinstance(err, asyncio.CancelledError) else "INTERNAL"


def _enum(enum, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower()


def _findings(findings: Iterable[inference_pb2.GuardrailFinding], stage: str) -> list[str]:
    return sorted({finding.entity for finding in findings if finding.stage == stage})


class Auditing:
    def __init__(self, audit_log: AuditLog | None, fingerprints: Fingerprints):
        self._log = audit_log
        self._fingerprints = fingerprints

    def _caller(self, kind: str) -> dict:
        return {"kind": kind, "time": utc_now(), "tenant": tenant_var.get(), "key_id": key_id_var.get(),
                "request_id": request_id_var.get()}

    def _hmac(self, text: str | None) -> str:
        return self._fingerprints.of(text) if text else ""

    def _prompt_hmac(self, turns: Iterable[tuple[str, str]]) -> str:
        return self._hmac(json.dumps([list(turn) for turn in turns], ensure_ascii=False))

    def _write(self, record: dict) -> None:
        if self._log is not None:
            self._log.write(record)

    def answered(self, state: RequestState, answer: Answer, cost_usd: float) -> None:
        """The record of a request that got its answer."""
        if self._log is None:
            return
        report = state.report
        self._write({
            **self._caller("request"), "outcome": "OK",
            **self._request_fields(state),
            "model": answer.model, "variant": answer.variant, "model_version": answer.model_version,
            "tier": TIER_NAMES[answer.tier],
            "cache": _enum(inference_pb2.CacheStatus, answer.cache_status, "CACHE_STATUS_"),
            "finish_reason": _enum(inference_pb2.FinishReason, answer.finish_reason, "FINISH_REASON_"),
            "input_tokens": answer.input_tokens, "output_tokens": answer.output_tokens,
            "cost_usd": round(cost_usd, 8),
            "guardrails": {stage: {"verdict": report.verdicts.get(stage, "off"),
                                   "findings": _findings(report.findings, stage)} for stage in ("input", "output")},
            "degraded": list(report.degraded),
            "answer_hmac": self._hmac(answer.text),
        })

    def _request_fields(self, state: RequestState) -> dict:
        request = state.request
        return {"user_hmac": self._hmac(request.user), "session_hmac": self._hmac(request.session_id),
                "template": state.tenant.template, "template_version": state.template.version,
                "prompt_hmac": self._prompt_hmac((turn.role, turn.content) for turn in request.turns)}

    def failed(self, request, state: RequestState | None, err: BaseException) -> None:
        """The record of a request that ended with an error (`request` is the message as received)."""
        if self._log is None:
            return
        record = {**self._caller("request"), "outcome": status_name(err),
                  "reason": err.reason if isinstance(err, ServiceError) else ""}
        if state is not None:
            record.update(self._request_fields(state), model=state.choice.model, variant=state.variant,
                          guardrails={stage: {"verdict": verdict, "findings": _findings(state.report.findings, stage)}
                                      for stage, verdict in state.report.verdicts.items()},
                          degraded=list(state.report.degraded))
        else:
            turns = [("user", request.prompt)] if request.prompt else [
                (_enum(inference_pb2.Role, message.role, "ROLE_"), message.content) for message in request.messages]
            record.update(user_hmac=self._hmac(request.user), prompt_hmac=self._prompt_hmac(turns))
            if isinstance(err, ServiceError) and err.reason == "INPUT_BLOCKED":
                blocked = [name for name in err.metadata.get("findings", "").split(", ") if name]
                record["guardrails"] = {"input": {"verdict": "block", "findings": sorted(blocked)}}
        self._write(record)

    def admin(self, action: str, target: str, outcome: str, detail: dict, *, actor: str = "") -> None:
        """The record of an admin action (a call of AdminService, or an automatic rollback)."""
        record = {**self._caller("admin"), "action": action, "target": target, "outcome": outcome,
                  "detail": detail}
        if actor:
            record["actor"] = actor
        self._write(record)
