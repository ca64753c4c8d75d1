"""The request pipeline, shared by unary and streaming calls.

  1 validate; tenant from gateway metadata only (services.common.context)
  2 embed the question once (retrieval's Embed) when RAG or the semantic cache needs it
  3 input guardrails: block (error with ErrorInfo) or redact
  4 tier choice (light or full) from the complexity estimate, or the pinned model/tier
  5 tier 1: exact cache, then semantic cache
  6 context: session history and RAG within the token budget, in the tenant's template
  7 generate, streaming through the output guardrails; full -> light fallback
  8 record: cache, session, usage, cost, metrics
Degradation: full model down -> light (degraded); retrieval down -> no context
(degraded); guardrails down -> fail closed unless the tenant fails open (degraded);
every model down -> a cached answer (degraded) or UNAVAILABLE with RetryInfo.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from typing import AsyncIterator

import numpy as np
from llmsuite.guardrails.v1 import guardrails_pb2
from llmsuite.inference.v1 import inference_pb2

from services.common.context import request_id_var, tenant_var
from services.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from services.router.cache import CachedAnswer, ResponseCache, Scope, exact_key, template_id
from services.router.config import RouterSettings, TenantSettings
from services.router.context import assemble
from services.router.generation_client import Completion, GenerationClient, ModelUnavailable
from services.router.guardrails_client import GuardrailsClient, OutputOutcome
from services.router.metrics import (
    ANSWERS,
    CACHE_LOOKUPS,
    CACHE_WRITES,
    COST,
    DEGRADED,
    GUARDRAIL_VERDICTS,
    OVERHEAD,
    TIER_CHOICES,
    TOKENS,
)
from services.router.pricing import cost_usd
from services.router.prompt import Document, SecretSource, build
from services.router.retrieval_client import RetrievalClient
from services.router.sessions import SessionStore
from services.router.tiers import TierChoice, choose
from services.router.tokens import estimate_tokens
from services.router.upstream import Deadline
from services.router.validation import InferenceRequest, Turn, validate

log = logging.getLogger(__name__)

_FINISH = {1: inference_pb2.FINISH_REASON_STOP, 2: inference_pb2.FINISH_REASON_LENGTH}
_TIER_NAMES = {inference_pb2.TIER_CACHE: "cache", inference_pb2.TIER_LIGHT: "light", inference_pb2.TIER_FULL: "full"}
_VERDICT_NAMES = {guardrails_pb2.VERDICT_ALLOW: "allow", guardrails_pb2.VERDICT_REDACT: "redact",
                  guardrails_pb2.VERDICT_BLOCK: "block"}
# Reasons and findings in an error's ErrorInfo are bounded, so a long list cannot
# blow up trailers.
_MAX_DETAIL_CHARS = 500


@dataclass(frozen=True)
class CachePlan:
    """How one request uses the cache."""

    read: bool = False
    write: bool = False
    semantic: bool = False


def cache_plan(policy: int, tenant: TenantSettings, *, temperature: float | None, redacted: bool) -> CachePlan:
    """Resolves the request's cache policy against the tenant's rules.

    Answers to redacted input are never cached (their text may refer to what was
    removed), and sampled answers (temperature > 0) only when the tenant allows.
    """
    sampled = temperature is not None and temperature > 0
    if not tenant.cache or redacted or (sampled and not tenant.cache_sampled):
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


def _detail(values) -> str:
    return ", ".join(str(v) for v in values)[:_MAX_DETAIL_CHARS]


def _finding(stage: str, finding) -> inference_pb2.GuardrailFinding:
    action = guardrails_pb2.Action.Name(finding.action).removeprefix("ACTION_").lower()
    return inference_pb2.GuardrailFinding(stage=stage, entity=finding.entity, action=action, score=finding.score)


@dataclass
class CheckedInput:
    """Client turns after input guardrails."""

    turns: tuple[Turn, ...]
    redacted: bool = False
    restore_token: bytes = b""


@dataclass
class _State:
    """What one request gathers on its way through the pipeline."""

    started: float
    findings: list = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)
    sources: list = field(default_factory=list)

    def degrade(self, reason: str) -> None:
        if reason not in self.degraded:
            self.degraded.append(reason)
            DEGRADED.labels(reason).inc()


def _final_response(state: _State, inference: InferenceRequest, overhead_s: float,
                    **answer) -> inference_pb2.GenerateResponse:
    """The last message of an answer: what was answered plus what every answer reports."""
    return inference_pb2.GenerateResponse(
        **answer,
        guardrail_findings=state.findings,
        degraded=bool(state.degraded),
        degraded_reasons=state.degraded,
        request_id=request_id_var.get(),
        overhead_ms=overhead_s * 1000,
        session_id=inference.session_id or "",
    )


class Pipeline:
    def __init__(self, settings: RouterSettings, generation: GenerationClient, guardrails: GuardrailsClient | None,
                 retrieval: RetrievalClient | None, cache: ResponseCache, sessions: SessionStore,
                 secrets: SecretSource):
        self._settings = settings
        self._generation = generation
        self._guardrails = guardrails
        self._retrieval = retrieval
        self._cache = cache
        self._sessions = sessions
        self._secrets = secrets

    async def run(self, request, time_remaining: float | None,
                  streaming: bool) -> AsyncIterator[str | inference_pb2.GenerateResponse]:
        """Yields text released to the caller (streaming only), then the final response."""
        settings = self._settings
        state = _State(time.perf_counter())
        deadline = Deadline(settings.request_timeout_s if time_remaining is None else max(time_remaining, 0.001))
        tenant_id = tenant_var.get()
        tenant = settings.tenant(tenant_id)
        inference = validate(request, settings, tenant)
        rag = bool(inference.retrieval_collection)
        if rag and self._retrieval is None:
            raise FailedPrecondition("retrieval is not configured on this deployment; send the request without "
                                     "retrieval.collection", reason="RETRIEVAL_NOT_CONFIGURED")
        question = inference.turns[-1].content
        wanted = cache_plan(inference.cache_policy, tenant, temperature=inference.sampling.temperature, redacted=False)
        # The embedding (retrieval service) and the input check (guardrails, which runs
        # its own tuned encoder) are independent calls: run them at the same time.
        embedding = None
        if self._retrieval is not None and (rag or wanted.semantic):
            embedding = asyncio.ensure_future(self._embed(question, deadline))
        try:
            checked = await self._check_input(inference, tenant, deadline, state)
        except BaseException:
            if embedding is not None:
                embedding.cancel()
            raise
        vector = await embedding if embedding is not None else None
        plan = cache_plan(inference.cache_policy, tenant, temperature=inference.sampling.temperature,
                          redacted=checked.redacted)
        history: tuple[Turn, ...] = ()
        if inference.session_id:
            history = await self._sessions.history(tenant_id, inference.session_id, tenant.history_turns)
        turns = history + checked.turns
        user_turns = sum(1 for turn in turns if turn.role == "user")
        choice = choose(settings, pinned_model=inference.model, pinned_tier=inference.tier,
                        user_text=checked.turns[-1].content, conversation_turns=user_turns, rag=rag,
                        max_tokens=inference.sampling.max_tokens)
        TIER_CHOICES.labels(_TIER_NAMES[choice.tier], choice.basis).inc()

        template = settings.templates[tenant.template]
        scope = Scope(tenant_id, choice.model, template_id(tenant.template, template), inference.sampling,
                      (inference.retrieval_collection, inference.retrieval_top_k, inference.retrieval_score_threshold))
        key = exact_key(scope, turns)
        # Semantic matching compares single questions: in a conversation the same
        # words can ask something else.
        single_question = len(turns) == 1 and vector is not None and not checked.redacted
        threshold = tenant.semantic_threshold or settings.semantic_threshold

        cache_status = inference_pb2.CACHE_STATUS_MISS if plan.read else inference_pb2.CACHE_STATUS_BYPASS
        if plan.read:
            found = await self._lookup(plan, key, scope, question, vector if single_question else None, threshold)
            if found is not None:
                async for event in self._from_cache(*found, inference, checked, tenant_id, state, streaming):
                    yield event
                return

        documents: list[Document] = []
        if rag:
            documents = await self._context(inference, checked, vector, tenant, deadline, state)
        secrets = self._secrets.for_request(request_id_var.get())
        prompt = build(template, turns, secrets, documents)

        released: list[str] = []
        completion: Completion | None = None
        outcome = OutputOutcome()
        models = [choice.model]
        if choice.tier == inference_pb2.TIER_FULL and tenant.fallback_to_light and choice.model != settings.light_model:
            models.append(settings.light_model)
        answered_by = choice
        for index, model in enumerate(models):
            attempt: list[str] = []
            try:
                async for event in self._attempt(model, prompt, inference, tenant, secrets.canary,
                                                 checked.restore_token, deadline):
                    if isinstance(event, str):
                        attempt.append(event)
                        if streaming:
                            released.append(event)
                            yield event
                    elif isinstance(event, Completion):
                        completion = event
                    else:
                        outcome = event
            except ModelUnavailable as err:
                if released:
                    raise
                if index + 1 < len(models):
                    log.warning("model %s unavailable (%s); the light model answers", model, err.reason)
                    state.degrade("full_model_unavailable")
                    answered_by = TierChoice(inference_pb2.TIER_LIGHT, settings.light_model, "fallback")
                    continue
                fallback = await self._cached_fallback(plan, scope, turns, question, vector if single_question else None,
                                                       threshold)
                if fallback is None:
                    raise Unavailable("no model can answer right now and no cached answer exists; retry later",
                                      reason="GENERATION_UNAVAILABLE", metadata={"model": model},
                                      retry_after_s=max(err.retry_after_s or 1.0, 0.1)) from None
                state.degrade("generation_unavailable")
                cached, status = fallback
                async for event in self._from_cache(cached, status, inference, checked, tenant_id, state, streaming):
                    yield event
                return
            if not streaming:
                released = attempt
            break

        text = "".join(released)
        if outcome.unchecked:
            state.degrade("guardrails_unavailable")
        finish = inference_pb2.FINISH_REASON_STOP
        if completion is not None:
            finish = _FINISH.get(completion.finish_reason, inference_pb2.FINISH_REASON_STOP)
        state.findings.extend(_finding("output", f) for f in outcome.findings)
        if self._guardrails is not None:
            GUARDRAIL_VERDICTS.labels("output", "block" if outcome.blocked else "redact" if outcome.redacted
                                      else "unchecked" if outcome.unchecked else "allow").inc()
        if outcome.blocked:
            finish = inference_pb2.FINISH_REASON_CONTENT_FILTER
            log.warning("output guardrails stopped the answer", extra={"reasons": _detail(outcome.reasons)})
        input_tokens = completion.input_tokens if completion else estimate_tokens(prompt)
        output_tokens = completion.output_tokens if completion else outcome.generated_pieces
        model_name = completion.model if completion else answered_by.model
        cost = cost_usd(settings.prices, model_name, input_tokens, output_tokens)
        COST.labels(model_name).inc(cost)
        TOKENS.labels(model_name, "input").inc(input_tokens)
        TOKENS.labels(model_name, "output").inc(output_tokens)

        if completion is not None and not outcome.blocked:
            await self._store(plan, key, scope, question, vector if single_question else None, state, outcome,
                              CachedAnswer(text, completion.finish_reason, input_tokens, output_tokens,
                                           completion.model, completion.model_version, answered_by.tier),
                              tenant)
            if inference.session_id:
                await self._remember(tenant_id, inference.session_id, checked.turns, text)

        generation_s = completion.elapsed_s if completion else 0.0
        overhead_s = max(time.perf_counter() - state.started - generation_s, 0.0)
        OVERHEAD.observe(overhead_s)
        ANSWERS.labels(_TIER_NAMES[answered_by.tier], model_name).inc()
        log.info("answered", extra={"model": model_name, "tier": _TIER_NAMES[answered_by.tier],
                                    "input_tokens": input_tokens, "output_tokens": output_tokens,
                                    "degraded": state.degraded, "cache": inference_pb2.CacheStatus.Name(cache_status)})
        yield _final_response(
            state, inference, overhead_s,
            text=text,
            finish_reason=finish,
            usage=inference_pb2.Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                                      total_tokens=input_tokens + output_tokens),
            cost_usd=cost,
            tier=answered_by.tier,
            model=model_name,
            model_version=completion.model_version if completion else "",
            cache_status=cache_status,
            sources=state.sources,
        )

    async def _lookup(self, plan: CachePlan, key: str, scope: Scope, question: str, vector: np.ndarray | None,
                      threshold: float) -> tuple[CachedAnswer, int] | None:
        """Tier 1: the exact cache, then (when enabled and possible) the semantic cache."""
        cached = await self._cache.get(key)
        CACHE_LOOKUPS.labels("exact", "hit" if cached else "miss").inc()
        if cached is not None:
            return cached, inference_pb2.CACHE_STATUS_HIT_EXACT
        if not plan.semantic or vector is None:
            return None
        hit = await self._cache.find_similar(scope, question, vector, threshold)
        CACHE_LOOKUPS.labels("semantic", "hit" if hit else "miss").inc()
        if hit is None:
            return None
        log.info("semantic cache hit", extra={"similarity": round(hit.similarity, 4)})
        return hit.answer, inference_pb2.CACHE_STATUS_HIT_SEMANTIC

    async def _embed(self, text: str, deadline: Deadline) -> np.ndarray | None:
        """The question's embedding, or None when retrieval cannot give one now."""
        try:
            return await self._retrieval.embed(text, deadline)
        except (Unavailable, ResourceExhausted, DeadlineExceeded) as err:
            log.warning("embedding unavailable: %s", err.message)
            deadline.timeout()
            return None

    async def _check_input(self, inference: InferenceRequest, tenant: TenantSettings, deadline: Deadline,
                           state: _State) -> CheckedInput:
        if self._guardrails is None:
            return CheckedInput(inference.turns)
        last = len(inference.turns) - 1
        turns = list(inference.turns)
        redacted = False
        restore_token = b""
        for index, turn in enumerate(inference.turns):
            if not turn.content.strip():
                continue
            try:
                verdict = await self._guardrails.check_input(
                    turn.content, policy=tenant.guardrails_policy,
                    reversible=tenant.reversible_redaction and index == last, deadline=deadline)
            except (Unavailable, ResourceExhausted, DeadlineExceeded) as err:
                if isinstance(err, DeadlineExceeded):
                    deadline.timeout()
                if not tenant.guardrails_fail_open:
                    raise Unavailable("input guardrails are unavailable and this tenant fails closed; retry later",
                                      reason="GUARDRAILS_UNAVAILABLE", metadata={"upstream": "guardrails"},
                                      retry_after_s=max(self._guardrails.upstream.breaker.retry_after_s(), 1.0)) from None
                log.warning("input guardrails unavailable; tenant fails open, input goes unchecked")
                state.degrade("guardrails_unavailable")
                GUARDRAIL_VERDICTS.labels("input", "unchecked").inc()
                return CheckedInput(inference.turns)
            GUARDRAIL_VERDICTS.labels("input", _VERDICT_NAMES.get(verdict.verdict, "unknown")).inc()
            state.findings.extend(_finding("input", f) for f in verdict.findings)
            if verdict.verdict == guardrails_pb2.VERDICT_BLOCK:
                field = "prompt" if inference.from_prompt else f"messages[{index}].content"
                entities = sorted({f.entity for f in verdict.findings if f.action == guardrails_pb2.ACTION_BLOCK})
                if verdict.injection_score >= 0.5 and "PROMPT_INJECTION" not in entities:
                    entities.append("PROMPT_INJECTION")
                raise InvalidArgument(
                    "the input guardrails blocked this request: " + (_detail(verdict.reasons) or "policy violation"),
                    field=field, reason="INPUT_BLOCKED",
                    metadata={"stage": "input", "findings": _detail(entities),
                              "injection_score": f"{verdict.injection_score:.3f}",
                              "reasons": _detail(verdict.reasons)})
            if verdict.verdict == guardrails_pb2.VERDICT_REDACT:
                redacted = True
                turns[index] = Turn(turn.role, verdict.sanitized_text)
                if verdict.restore_token:
                    restore_token = verdict.restore_token
        return CheckedInput(tuple(turns), redacted, restore_token)

    async def _context(self, inference: InferenceRequest, checked: CheckedInput, vector: np.ndarray | None,
                       tenant: TenantSettings, deadline: Deadline, state: _State) -> list[Document]:
        # A redacted question is searched as redacted, with its own embedding.
        query = checked.turns[-1].content
        try:
            hits = await self._retrieval.search(
                inference.retrieval_collection, query, inference.retrieval_top_k, inference.retrieval_score_threshold,
                None if checked.redacted else vector, deadline)
        except (Unavailable, ResourceExhausted, DeadlineExceeded) as err:
            deadline.timeout()
            log.warning("retrieval unavailable (%s); answering without context", err.message)
            state.degrade("retrieval_unavailable")
            return []
        documents = assemble(hits, tenant.context_token_budget)
        state.sources.extend(inference_pb2.Source(document_id=d.document_id, chunk_index=d.chunk_index, score=d.score)
                             for d in documents)
        return documents

    async def _attempt(self, model: str, prompt: str, inference: InferenceRequest, tenant: TenantSettings,
                       canary: str, restore_token: bytes, deadline: Deadline) -> AsyncIterator:
        """One model's answer through the output check: text, Completion, OutputOutcome."""
        source = self._generation.stream(model, prompt, inference.sampling, deadline)
        if self._guardrails is None:
            generated = 0
            async for event in source:
                generated += isinstance(event, str)
                yield event
            yield OutputOutcome(generated_pieces=generated)
            return
        try:
            async for event in self._guardrails.checked(source, policy=tenant.guardrails_policy, canaries=[canary],
                                                        restore_token=restore_token, deadline=deadline,
                                                        fail_open=tenant.guardrails_fail_open):
                yield event
        except Unavailable as err:
            if isinstance(err, ModelUnavailable):
                raise
            if err.metadata.get("upstream") == "guardrails":
                raise Unavailable("output guardrails are unavailable and this tenant fails closed; retry later",
                                  reason="GUARDRAILS_UNAVAILABLE", metadata={"upstream": "guardrails"},
                                  retry_after_s=max(self._guardrails.upstream.breaker.retry_after_s(), 1.0)) from None
            raise

    async def _from_cache(self, cached: CachedAnswer, status: int, inference: InferenceRequest,
                          checked: CheckedInput, tenant_id: str, state: _State,
                          streaming: bool) -> AsyncIterator[str | inference_pb2.GenerateResponse]:
        if streaming and cached.text:
            yield cached.text
        if inference.session_id:
            await self._remember(tenant_id, inference.session_id, checked.turns, cached.text)
        overhead_s = time.perf_counter() - state.started
        OVERHEAD.observe(overhead_s)
        ANSWERS.labels("cache", cached.model).inc()
        log.info("answered from cache", extra={"cache": inference_pb2.CacheStatus.Name(status),
                                               "degraded": state.degraded})
        yield _final_response(
            state, inference, overhead_s,
            text=cached.text,
            finish_reason=_FINISH.get(cached.finish_reason, inference_pb2.FINISH_REASON_STOP),
            usage=inference_pb2.Usage(),
            cost_usd=0.0,
            tier=inference_pb2.TIER_CACHE,
            model=cached.model,
            model_version=cached.model_version,
            cache_status=status,
        )

    async def _cached_fallback(self, plan: CachePlan, scope: Scope, turns: tuple[Turn, ...], question: str,
                               vector: np.ndarray | None, threshold: float) -> tuple[CachedAnswer, int] | None:
        """Any cached answer to this request, from either model, while generation is down."""
        if not plan.write:
            return None
        scopes = [replace(scope, model=model) for model in
                  dict.fromkeys((scope.model, self._settings.light_model, self._settings.full_model))]
        for candidate in scopes:
            cached = await self._cache.get(exact_key(candidate, turns))
            if cached is not None:
                return cached, inference_pb2.CACHE_STATUS_HIT_EXACT
        if plan.semantic and vector is not None:
            for candidate in scopes:
                hit = await self._cache.find_similar(candidate, question, vector, threshold)
                if hit is not None:
                    return hit.answer, inference_pb2.CACHE_STATUS_HIT_SEMANTIC
        return None

    async def _store(self, plan: CachePlan, key: str, scope: Scope, question: str, vector: np.ndarray | None,
                     state: _State, outcome: OutputOutcome, answer: CachedAnswer, tenant: TenantSettings) -> None:
        if not plan.write:
            CACHE_WRITES.labels("policy").inc()
            return
        if outcome.redacted:
            CACHE_WRITES.labels("redacted").inc()
            return
        if state.degraded:
            CACHE_WRITES.labels("degraded").inc()
            return
        await self._cache.put(key, answer, tenant.cache_ttl_s)
        if plan.semantic and vector is not None:
            await self._cache.add_vector(scope, question, vector, key, tenant.cache_ttl_s)
        CACHE_WRITES.labels("stored").inc()

    async def _remember(self, tenant_id: str, session_id: str, turns: tuple[Turn, ...], answer: str) -> None:
        new = [turn for turn in turns if turn.role != "system"]
        await self._sessions.append(tenant_id, session_id, [*new, Turn("assistant", answer)])
