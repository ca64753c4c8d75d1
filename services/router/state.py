"""RequestState: one request on its way through the stages.

Admission builds it with everything that identifies the request (who asks what, of
which model, under which cache key); the later stages read it and add to its Report.
"""

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
from llmsuite.guardrails.v1 import guardrails_pb2
from llmsuite.inference.v1 import inference_pb2

from services.common.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from services.common.resilience import Deadline
from services.router.cache import Scope
from services.router.config import PromptTemplate, TenantSettings
from services.router.metrics import DEGRADED
from services.router.tiers import TierChoice
from services.router.validation import InferenceRequest, Turn

# Failures of an upstream that a request may degrade around (per tenant policy),
# as long as its own deadline has not passed.
UPSTREAM_DOWN = (Unavailable, ResourceExhausted, DeadlineExceeded)

TIER_NAMES = {inference_pb2.TIER_CACHE: "cache", inference_pb2.TIER_LIGHT: "light", inference_pb2.TIER_FULL: "full"}

# Reasons and findings in an error's ErrorInfo, or a log line, are bounded, so a
# long list cannot blow up trailers.
_MAX_DETAIL_CHARS = 500


def detail(values: Iterable) -> str:
    """Values joined for an error's metadata or a log line, bounded in length."""
    return ", ".join(str(v) for v in values)[:_MAX_DETAIL_CHARS]


@dataclass(frozen=True)
class CachePlan:
    """How one request uses the cache."""

    read: bool = False
    write: bool = False
    semantic: bool = False

    @property
    def miss_status(self) -> int:
        """The cache status of an answer that did not come from the cache."""
        return inference_pb2.CACHE_STATUS_MISS if self.read else inference_pb2.CACHE_STATUS_BYPASS


def cache_plan(policy: int, tenant: TenantSettings, *, temperature: float | None) -> CachePlan:
    """Resolves the request's cache policy against the tenant's rules.

    Sampled answers (temperature > 0) are cached only when the tenant allows.
    """
    sampled = temperature is not None and temperature > 0
    if not tenant.cache or (sampled and not tenant.cache_sampled):
        return CachePlan()
    if policy == inference_pb2.CACHE_POLICY_BYPASS:
        return CachePlan()
    if policy == inference_pb2.CACHE_POLICY_REFRESH:
        return CachePlan(read=False, write=True, semantic=tenant.semantic_cache)
    if policy == inference_pb2.CACHE_POLICY_EXACT:
        return CachePlan(read=True, write=True, semantic=False)
    if policy == inference_pb2.CACHE_POLICY_SEMANTIC:
        return CachePlan(read=True, write=True, semantic=True)
    return CachePlan(read=True, write=True, semantic=tenant.semantic_cache)


@dataclass
class Report:
    """What every answer reports besides its text: guardrail findings, degradations, sources."""

    findings: list[inference_pb2.GuardrailFinding] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)
    sources: list[inference_pb2.Source] = field(default_factory=list)
    # Stage ("input", "output") -> the guardrails' verdict (allow, flag, redact, block, unchecked).
    verdicts: dict[str, str] = field(default_factory=dict)

    def degrade(self, reason: str) -> None:
        if reason not in self.degraded:
            self.degraded.append(reason)
            DEGRADED.labels(reason).inc()

    def add_findings(self, stage: str, findings: Iterable[guardrails_pb2.Finding]) -> None:
        for finding in findings:
            action = guardrails_pb2.Action.Name(finding.action).removeprefix("ACTION_").lower()
            self.findings.append(inference_pb2.GuardrailFinding(stage=stage, entity=finding.entity, action=action,
                                                                score=finding.score))


@dataclass(frozen=True)
class CheckedInput:
    """Client turns after input guardrails."""

    turns: tuple[Turn, ...]
    redacted: bool = False
    restore_token: bytes = b""


@dataclass(frozen=True)
class RequestState:
    """What later stages need of one request; they add to its report only."""

    request: InferenceRequest
    tenant_id: str
    tenant: TenantSettings
    # The API key the gateway authenticated ("" for direct calls).
    key_id: str
    deadline: Deadline
    streaming: bool
    # perf_counter() when the request arrived.
    started: float
    report: Report
    checked: CheckedInput
    # The question's embedding, when the semantic cache or RAG asked for one and retrieval gave it.
    vector: np.ndarray | None
    # Earlier turns of the session, oldest first.
    history: tuple[Turn, ...]
    choice: TierChoice
    # The variant of the chosen model that serves this user (rollout.py); the model itself
    # outside any rollout.
    variant: str
    # Who the variant is sticky to: the request's user, else the key id, else (no identity
    # at all) the request id.
    user_key: str
    # The tenant's template in the version active when the request arrived (templates.py).
    template: PromptTemplate
    # The cache scope of the chosen variant, and the exact key of this conversation in it.
    scope: Scope
    key: str
    # The request's cache policy, before input guardrails had their say.
    wanted: CachePlan

    @property
    def plan(self) -> CachePlan:
        """How this request uses the cache; answers to redacted input are never cached
        (their text may refer to what was removed)."""
        return CachePlan() if self.checked.redacted else self.wanted

    @property
    def conversation(self) -> tuple[Turn, ...]:
        """What the model answers: the session's history, then the checked client turns."""
        return self.history + self.checked.turns

    @property
    def question(self) -> str:
        """The client's last message, as sent."""
        return self.request.turns[-1].content

    @property
    def question_vector(self) -> np.ndarray | None:
        """The embedding the semantic cache may use: single questions only, since in a
        conversation the same words can ask something else."""
        single = len(self.conversation) == 1 and not self.checked.redacted
        return self.vector if single else None
