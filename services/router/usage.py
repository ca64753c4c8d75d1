"""Usage per tenant: one UsageRecord per answered request, counted in the shared store, read by GetUsage.

finish builds the record once; its consumers are the usage counters (here), the
request log that feedback checks (feedback.py) and the audit log (auditing.py, which
adds the guardrails' verdicts and HMACs of the text). It carries what was decided
and counted about the request, never its text.
"""

import logging
import re
from dataclasses import dataclass
from typing import Iterable

from llmsuite.inference.v1 import inference_pb2

from services.common.context import scopes_var, tenant_var
from services.common.errors import InvalidArgument, PermissionDenied, Unavailable
from services.router.budgets import subjects
from services.router.config import Budget, RouterSettings
from services.router.counters import DAY, MINUTE, MONTH, NANO, Counters, Debit, Subject, subject_prefix, \
    window_bounds
from services.router.metrics import BUDGET_ERRORS
from services.router.state import TIER_NAMES
from services.router.stores import StoreError
from services.router.timestamps import timestamp

log = logging.getLogger(__name__)

# The scope the gateway grants operators; it lets GetUsage name another tenant.
ADMIN_SCOPE = "admin"
_WINDOWS = {inference_pb2.USAGE_WINDOW_UNSPECIFIED: DAY, inference_pb2.USAGE_WINDOW_MINUTE: MINUTE,
            inference_pb2.USAGE_WINDOW_DAY: DAY, inference_pb2.USAGE_WINDOW_MONTH: MONTH}
_NAME = re.compile(r"^[\x21-\x7e]{1,128}$")


@dataclass(frozen=True)
class UsageRecord:
    """One answered request, as every per-request record (usage, feedback, audit) needs it."""

    # Unix time the answer finished.
    at: float
    request_id: str
    tenant: str
    key_id: str
    model: str
    model_version: str
    # The model variant that answered (rollout.py), e.g. full@2; for a cache hit, the one that
    # first produced the answer.
    variant: str
    template: str
    template_version: str
    tier: int
    cache_status: int
    finish_reason: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    # What a cache hit would have cost if generated again (0 for generated answers).
    cache_savings_usd: float
    degraded: tuple[str, ...]
    # Guardrail findings as "stage:ENTITY", for example "input:EMAIL_ADDRESS".
    findings: tuple[str, ...]
    streaming: bool


def finding_names(findings: Iterable[inference_pb2.GuardrailFinding]) -> tuple[str, ...]:
    """Findings as UsageRecord.findings holds them: "stage:ENTITY"."""
    return tuple(f"{finding.stage}:{finding.entity}" for finding in findings)


class Usage:
    def __init__(self, settings: RouterSettings, counters: Counters):
        self._settings = settings
        self._counters = counters

    async def record(self, record: UsageRecord, debit: Debit) -> None:
        """Counts an answered request; settles what its budget debited to what it used."""
        tenant = self._settings.tenant(record.tenant)
        tokens = record.input_tokens + record.output_tokens
        fields = {"requests": 1, "input_tokens": record.input_tokens, "output_tokens": record.output_tokens,
                  "tokens": tokens - debit.tokens, "cost": round(record.cost_usd * NANO) - debit.nano,
                  "savings": round(record.cache_savings_usd * NANO), f"tier_{TIER_NAMES[record.tier]}": 1}
        try:
            await self._counters.record(subjects(record.tenant, tenant, record.key_id), fields)
        except StoreError as err:
            BUDGET_ERRORS.labels("record").inc()
            log.warning("usage not counted: %s", err)

    async def report(self, request: inference_pb2.GetUsageRequest) -> inference_pb2.GetUsageResponse:
        """GetUsage: one tenant's (or key's) usage in the current window."""
        caller = tenant_var.get()
        tenant_id = request.tenant or caller
        if request.tenant and not _NAME.match(request.tenant):
            raise InvalidArgument("tenant must be 1 to 128 printable characters without spaces", field="tenant")
        if request.key_id and not _NAME.match(request.key_id):
            raise InvalidArgument("key_id must be 1 to 128 printable characters without spaces", field="key_id")
        if request.window not in _WINDOWS:
            raise InvalidArgument("unknown window", field="window")
        if tenant_id != caller and ADMIN_SCOPE not in scopes_var.get().split():
            raise PermissionDenied("reading another tenant's usage needs the 'admin' scope",
                                   reason="ADMIN_SCOPE_REQUIRED")
        window = _WINDOWS[request.window]
        try:
            fields, now = await self._counters.read(Subject(subject_prefix(tenant_id, request.key_id)), window)
        except StoreError as err:
            log.warning("usage cannot be read: %s", err)
            raise Unavailable("usage cannot be read right now; retry shortly", reason="USAGE_UNAVAILABLE",
                              retry_after_s=1.0) from None
        tenant = self._settings.tenant(tenant_id)
        budget = tenant.key_budgets.get(request.key_id, Budget()) if request.key_id else tenant.budget
        start, _ = window_bounds(window, now)
        return inference_pb2.GetUsageResponse(
            tenant=tenant_id, key_id=request.key_id,
            window=request.window or inference_pb2.USAGE_WINDOW_DAY,
            window_start=timestamp(start),
            requests=fields.get("requests", 0), input_tokens=fields.get("input_tokens", 0),
            output_tokens=fields.get("output_tokens", 0), total_tokens=fields.get("tokens", 0),
            cost_usd=fields.get("cost", 0) / NANO, cache_savings_usd=fields.get("savings", 0) / NANO,
            tiers=inference_pb2.TierMix(cache=fields.get("tier_cache", 0), light=fields.get("tier_light", 0),
                                        full=fields.get("tier_full", 0)),
            budget_tokens=budget.tokens_per_minute if window == MINUTE else 0,
            budget_usd={DAY: budget.usd_per_day, MONTH: budget.usd_per_month}.get(window, 0.0),
        )
