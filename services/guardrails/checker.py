"""The checks themselves, independent of gRPC: policy resolution, findings, verdicts.

A check finds items (PII, secrets, blocklist terms, canaries), applies the policy's
action to each, scores prompt injection (inputs only) and derives one verdict:
BLOCK if anything blocks, else REDACT if anything was replaced, else FLAG if a
prompt-injection finding was flagged (the text goes on as it is), else ALLOW. A
flagged finding is in the findings whatever the verdict. When the analysis itself
fails, the policy decides: fail closed (BLOCK) or open (ALLOW).
"""

import asyncio
import hashlib
import logging
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from enum import Enum

from services.common.errors import NotFound, PermissionDenied
from services.guardrails import metrics
from services.guardrails.actions import Finding, Placeholders, Redactor, restore
from services.guardrails.config import (
    BLOCKLIST_ENTITY, CANARY_ENTITY, INJECTION_ENTITY, Action, GuardrailsSettings, Policy, TenantPolicy,
)
from services.guardrails.injection import InjectionDetector, InjectionResult
from services.guardrails.pii import AnalysisTimeout, Budget, PiiScanner, non_overlapping
from services.guardrails.terms import blocklist_regex, find_canaries, find_terms

log = logging.getLogger(__name__)

# Texts up to this long are analysed on the event loop; longer ones on a worker
# thread, so one large text does not stall every other call.
_INLINE_CHARS = 4096
_MAX_POLICY_NAME = 64


class Verdict(str, Enum):
    ALLOW = "allow"
    REDACT = "redact"
    BLOCK = "block"
    FLAG = "flag"


@dataclass
class Outcome:
    verdict: Verdict
    text: str  # sanitised; empty when blocked
    findings: list[Finding] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    injection_score: float = 0.0
    placeholders: Placeholders = field(default_factory=Placeholders)
    canary_leaked: bool = False
    stage: str = "pii"


def drop_overlaps(findings: list[Finding]) -> list[Finding]:
    """One finding per span of text: canaries first, then blocklist terms, then by score and length."""
    def rank(f: Finding) -> tuple:
        return (f.entity != CANARY_ENTITY, f.entity != BLOCKLIST_ENTITY, -f.score, -(f.end - f.start), f.start)

    ranked = sorted(findings, key=rank)
    kept = [ranked[i] for i in non_overlapping([(f.start, f.end) for f in ranked])]
    return sorted(kept, key=lambda f: f.start)


def _safe_error(err: BaseException) -> str:
    """The error's type and where it happened, without its message (which may quote the text)."""
    frames = traceback.extract_tb(err.__traceback__)[-3:]
    where = " < ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in reversed(frames))
    return f"{type(err).__name__} at {where}"


class Guard:
    def __init__(self, settings: GuardrailsSettings, scanner: PiiScanner, detector: InjectionDetector,
                 redactor: Redactor):
        self.settings = settings
        self.scanner = scanner
        self.detector = detector
        self.redactor = redactor
        # sha256 of (tenant, instructions, text) -> the policy it was checked under and its
        # outcome: a digest, so the keys hold no text; the policy object, so an entry counts
        # only for the very policy it was made under.
        self._verdicts: OrderedDict[bytes, tuple[Policy, Outcome]] = OrderedDict()

    def resolve_policy(self, tenant: str, requested: str) -> Policy:
        choice = self.settings.tenants.get(tenant, TenantPolicy())
        if not requested or requested == choice.policy:
            return self.settings.policies[choice.policy]
        shown = requested[:_MAX_POLICY_NAME]
        if requested not in self.settings.policies:
            raise NotFound(f"no guardrails policy named {shown!r} is configured; leave `policy` empty to use "
                           "the tenant's own policy", reason="POLICY_NOT_FOUND")
        if requested not in choice.allowed_policies:
            raise PermissionDenied(f"tenant {tenant!r} may not use guardrails policy {shown!r}; an operator can "
                                   "add it to the tenant's allowed_policies", reason="POLICY_NOT_ALLOWED")
        return self.settings.policies[requested]

    def find_items(self, text: str, policy: Policy, canaries: tuple[str, ...] = (),
                   budget: Budget | None = None) -> list[Finding]:
        """PII, secrets, blocklist terms and canaries in text, without overlaps."""
        started = time.perf_counter()
        budget = budget or Budget(self.settings.analysis_timeout_s)
        findings = [Finding(d.entity, d.start, d.end, d.score, policy.action(d.entity))
                    for d in self.scanner.scan(text, policy.min_score, budget)]
        findings += [Finding(BLOCKLIST_ENTITY, start, end, 1.0, policy.action(BLOCKLIST_ENTITY))
                     for start, end in find_terms(text, blocklist_regex(policy.blocklist))]
        findings += [Finding(CANARY_ENTITY, start, end, 1.0, Action.BLOCK)
                     for start, end in find_canaries(text, canaries)]
        metrics.STAGE_SECONDS.labels("pii").observe(time.perf_counter() - started)
        return drop_overlaps(findings)

    async def _find_items(self, text: str, policy: Policy, canaries: tuple[str, ...] = ()) -> list[Finding]:
        if len(text) <= _INLINE_CHARS:
            return self.find_items(text, policy, canaries)
        budget = Budget(self.settings.analysis_timeout_s)
        try:
            return await asyncio.to_thread(self.find_items, text, policy, canaries, budget)
        finally:
            budget.cancel()  # when this call was cancelled, its thread stops at its next check

    def _verdict(self, text: str, findings: list[Finding], tenant: str, placeholders: Placeholders,
                 reasons: list[str], restore_map: dict[str, str] | None = None) -> Outcome:
        blocking = [f for f in findings if f.action is Action.BLOCK]
        canary = any(f.entity == CANARY_ENTITY for f in findings)
        if blocking:
            entities = sorted({f.entity for f in blocking})
            reasons = [*reasons, "blocked by policy: " + ", ".join(entities)]
            stage = "canary" if canary else "blocklist" if BLOCKLIST_ENTITY in entities else "pii"
            return Outcome(Verdict.BLOCK, "", findings, reasons, canary_leaked=canary, stage=stage,
                           placeholders=placeholders)
        sanitized = self.redactor.apply(text, findings, tenant, placeholders)
        if restore_map:
            sanitized = restore(sanitized, restore_map)
        replaced = any(f.action in (Action.REDACT, Action.MASK, Action.HASH) for f in findings)
        flagged = any(f.action is Action.FLAG for f in findings)
        verdict = Verdict.REDACT if replaced else Verdict.FLAG if flagged else Verdict.ALLOW
        return Outcome(verdict, sanitized, findings, reasons, placeholders=placeholders)

    def failed(self, check: str, policy: Policy, text: str, err: Exception) -> Outcome:
        metrics.ANALYSIS_ERRORS.labels(check).inc()
        log.error("%s analysis failed (%s); %s", check, _safe_error(err),
                  "blocking (fail closed)" if policy.fail_closed else "letting the text through (fail open)")
        what = str(err) if isinstance(err, AnalysisTimeout) else "analysis failed"
        if policy.fail_closed:
            return Outcome(Verdict.BLOCK, "", reasons=[f"{what}; blocked because the policy fails closed"],
                           stage="error")
        return Outcome(Verdict.ALLOW, text, reasons=[f"{what}; allowed because the policy fails open"],
                       stage="error")

    async def _analyse_input(self, text: str, policy: Policy) -> tuple[list[Finding], InjectionResult]:
        started = time.perf_counter()
        pending = self.detector.prepare(text, policy.learned_signal)
        if pending.result is not None or not self.detector.can_embed:
            findings = await self._find_items(text, policy)
            injection = self.detector.finish(pending, None)
        else:
            # The embedding is computed on the embedder's thread; yielding once lets the
            # batching worker hand it over before the PII analysis occupies this thread.
            embedding_task = asyncio.ensure_future(self.detector.embed(pending.signals.normalised))
            await asyncio.sleep(0)
            try:
                findings = await self._find_items(text, policy)
            except BaseException:
                embedding_task.cancel()
                raise
            injection = self.detector.finish(pending, await embedding_task, computed=True)
        metrics.STAGE_SECONDS.labels("input").observe(time.perf_counter() - started)
        return findings, injection

    @staticmethod
    def _injection_finding(text: str, injection: InjectionResult, policy: Policy) -> tuple[Finding, str] | None:
        """The PROMPT_INJECTION finding (BLOCK or FLAG) and its reason, when the score reaches the flag band."""
        if injection.score < policy.injection_flag_threshold:
            return None
        blocks = policy.injection_action is Action.BLOCK and injection.score >= policy.injection_block_threshold
        action, threshold = ((Action.BLOCK, policy.injection_block_threshold) if blocks
                             else (Action.FLAG, policy.injection_flag_threshold))
        reason = f"prompt injection score {injection.score:.2f} >= {action.value} threshold {threshold:.2f}"
        log.info("prompt injection %s", "blocked" if blocks else "flagged",
                 extra={"injection_score": round(injection.score, 4), "stage": injection.stage,
                        "threshold": threshold})
        return Finding(INJECTION_ENTITY, 0, len(text), round(injection.score, 4), action), reason

    async def check_input(self, text: str, policy: Policy, tenant: str, *, instructions: bool = False) -> Outcome:
        """`instructions`: the caller's own instructions (an accepted client system message), scored for
        injection but never flagged or blocked for it. A text checked before under the same
        policy gets the verdict it got then (the checks are deterministic)."""
        key = hashlib.sha256(f"{tenant}\0{int(instructions)}\0{text}".encode()).digest()
        cached = self._verdicts.get(key)
        if cached is not None and cached[0] is policy:
            self._verdicts.move_to_end(key)
            metrics.VERDICT_CACHE.labels("hit").inc()
            self._count("input", cached[1])
            return replace(cached[1])
        metrics.VERDICT_CACHE.labels("miss").inc()
        outcome = await self._check_input(text, policy, tenant, instructions)
        # Failed analyses are not verdicts; redactions hold the values they replaced.
        if self.settings.verdict_cache_entries and outcome.stage != "error" and outcome.verdict is not Verdict.REDACT:
            self._verdicts[key] = (policy, replace(outcome))
            if len(self._verdicts) > self.settings.verdict_cache_entries:
                self._verdicts.popitem(last=False)
        return outcome

    async def _check_input(self, text: str, policy: Policy, tenant: str, instructions: bool) -> Outcome:
        try:
            findings, injection = await self._analyse_input(text, policy)
            reasons = list(injection.reasons)
            found = None if instructions else self._injection_finding(text, injection, policy)
            if found is not None:
                findings.append(found[0])
                reasons.insert(0, found[1])
            outcome = self._verdict(text, findings, tenant, Placeholders(), reasons)
        except Exception as err:  # fail closed/open is the policy's call, whatever broke
            outcome = self.failed("input", policy, text, err)
            self._count("input", outcome)
            return outcome

        metrics.INJECTION_SCORE.observe(injection.score)
        metrics.EMBEDDINGS.labels("computed" if injection.computed_embedding else "skipped").inc()
        outcome.injection_score = injection.score
        injection_blocked = any(f.entity == INJECTION_ENTITY and f.action is Action.BLOCK for f in findings)
        if outcome.verdict in (Verdict.ALLOW, Verdict.FLAG) or (outcome.verdict is Verdict.BLOCK and injection_blocked):
            outcome.stage = injection.stage
        self._count("input", outcome)
        return outcome

    def check_output(self, text: str, policy: Policy, tenant: str, canaries: tuple[str, ...] = (),
                     restore_map: dict[str, str] | None = None, budget: Budget | None = None) -> Outcome:
        try:
            findings = self.find_items(text, policy, canaries, budget)
            outcome = self._verdict(text, findings, tenant, Placeholders(restore_map), [], restore_map)
        except Exception as err:
            outcome = self.failed("output", policy, text, err)
        self._count("output", outcome)
        return outcome

    async def check_output_async(self, text: str, policy: Policy, tenant: str, canaries: tuple[str, ...] = (),
                                 restore_map: dict[str, str] | None = None) -> Outcome:
        if len(text) <= _INLINE_CHARS:
            return self.check_output(text, policy, tenant, canaries, restore_map)
        budget = Budget(self.settings.analysis_timeout_s)
        try:
            return await asyncio.to_thread(self.check_output, text, policy, tenant, canaries, restore_map, budget)
        finally:
            budget.cancel()

    @staticmethod
    def _count(check: str, outcome: Outcome) -> None:
        metrics.VERDICTS.labels(check, outcome.verdict.value, outcome.stage).inc()
        for finding in outcome.findings:
            metrics.FINDINGS.labels(check, finding.entity, finding.action.value).inc()
