"""The router's audit records: one per request (from finish, or from the pipeline when a
request fails) and one per admin action, handed to the shared audit log (services/audit).
An answered request's record is made of its UsageRecord (usage.py), the one set of
per-request facts that usage counters and feedback read too.

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
from services.audit.log import AuditLog, utc_now, utc_time
from services.common.context import key_id_var, request_id_var, tenant_var
from services.common.errors import ServiceError
from services.router.state import TIER_NAMES, RequestState
from services.router.usage import UsageRecord, finding_names
from services.router.validation import InferenceRequest

log = logging.getLogger(__name__)

AUTOMATIC = "automatic"


def status_name(err: BaseException) -> str:
    if isinstance(err, ServiceError):
        return err.code.name
    return "CANCELLED" if isinstance(err, asyncio.CancelledError) else "INTERNAL"


def _enum(enum, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower()


def _findings(names: Iterable[str], stage: str) -> list[str]:
    """The finding types of one stage, from UsageRecord.findings ("stage:ENTITY")."""
    return sorted({name.partition(":")[2] for name in names if name.partition(":")[0] == stage})


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

    def answered(self, record: UsageRecord, state: RequestState, answer_text: str) -> None:
        """The record of a request that got its answer: the facts of its usage record, the
        guardrails' verdicts, and HMACs of the text."""
        if self._log is None:
            return
        self._write({
            "kind": "request", "time": utc_time(record.at), "tenant": record.tenant, "key_id": record.key_id,
            "request_id": record.request_id, "outcome": "OK",
            **self._text_hmacs(state.request),
            "template": record.template, "template_version": record.template_version,
            "model": record.model, "variant": record.variant, "model_version": record.model_version,
            "tier": TIER_NAMES[record.tier],
            "cache": _enum(inference_pb2.CacheStatus, record.cache_status, "CACHE_STATUS_"),
            "finish_reason": _enum(inference_pb2.FinishReason, record.finish_reason, "FINISH_REASON_"),
            "input_tokens": record.input_tokens, "output_tokens": record.output_tokens,
            "cost_usd": round(record.cost_usd, 8),
            "guardrails": {stage: {"verdict": state.report.verdicts.get(stage, "off"),
                                   "findings": _findings(record.findings, stage)} for stage in ("input", "output")},
            "degraded": list(record.degraded),
            "answer_hmac": self._hmac(answer_text),
        })

    def _text_hmacs(self, request: InferenceRequest) -> dict:
        return {"user_hmac": self._hmac(request.user), "session_hmac": self._hmac(request.session_id),
                "prompt_hmac": self._prompt_hmac((turn.role, turn.content) for turn in request.turns)}

    def failed(self, request, state: RequestState | None, err: BaseException) -> None:
        """The record of a request that ended with an error (`request` is the message as received)."""
        if self._log is None:
            return
        record = {**self._caller("request"), "outcome": status_name(err),
                  "reason": err.reason if isinstance(err, ServiceError) else ""}
        if state is not None:
            names = finding_names(state.report.findings)
            record.update(self._text_hmacs(state.request), template=state.tenant.template,
                          template_version=state.template.version, model=state.choice.model, variant=state.variant,
                          guardrails={stage: {"verdict": verdict, "findings": _findings(names, stage)}
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
