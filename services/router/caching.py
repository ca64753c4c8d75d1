"""Stage 2, cache: how one request uses the response cache (cache.py).

lookup: the exact cache, then the semantic one (when the plan allows it).
fallback: while no model can answer, any cached answer to the request, from either model.
store: a fresh answer, unless the policy, a redaction or a degradation rules it out.
"""

import logging
from dataclasses import replace
from typing import Sequence

from llmsuite.inference.v1 import inference_pb2

from services.router.cache import ResponseCache, exact_key
from services.router.config import RouterSettings
from services.router.events import Answer
from services.router.metrics import CACHE_LOOKUPS, CACHE_WRITES
from services.router.state import RequestState

log = logging.getLogger(__name__)


class Caching:
    def __init__(self, settings: RouterSettings, cache: ResponseCache):
        self._settings = settings
        self._cache = cache

    def _threshold(self, state: RequestState) -> float:
        return state.tenant.semantic_threshold or self._settings.semantic_threshold

    async def lookup(self, state: RequestState) -> Answer | None:
        """Tier 1: the exact cache, then (when enabled and possible) the semantic cache."""
        plan = state.plan
        if not plan.read:
            return None
        cached = await self._cache.get(state.key)
        CACHE_LOOKUPS.labels("exact", "hit" if cached else "miss").inc()
        if cached is not None:
            return Answer.cached(cached, inference_pb2.CACHE_STATUS_HIT_EXACT)
        vector = state.question_vector
        if not plan.semantic or vector is None:
            return None
        hit = await self._cache.find_similar(state.scope, state.question, vector, self._threshold(state))
        CACHE_LOOKUPS.labels("semantic", "hit" if hit else "miss").inc()
        if hit is None:
            return None
        log.info("semantic cache hit", extra={"similarity": round(hit.similarity, 4)})
        return Answer.cached(hit.answer, inference_pb2.CACHE_STATUS_HIT_SEMANTIC)

    async def fallback(self, state: RequestState, variants: Sequence[str]) -> Answer | None:
        """Any cached answer to this request, from any of `variants` or either tier's own model,
        while generation is down."""
        plan = state.plan
        if not plan.write:
            return None
        models = dict.fromkeys((state.scope.model, *variants, self._settings.light_model, self._settings.full_model))
        scopes = [replace(state.scope, model=model) for model in models]
        for scope in scopes:
            cached = await self._cache.get(exact_key(scope, state.conversation))
            if cached is not None:
                return Answer.cached(cached, inference_pb2.CACHE_STATUS_HIT_EXACT)
        vector = state.question_vector
        if plan.semantic and vector is not None:
            for scope in scopes:
                hit = await self._cache.find_similar(scope, state.question, vector, self._threshold(state))
                if hit is not None:
                    return Answer.cached(hit.answer, inference_pb2.CACHE_STATUS_HIT_SEMANTIC)
        return None

    async def store(self, state: RequestState, answer: Answer) -> str:
        """Keeps a model's complete answer (answer.fresh), unless the policy, a redaction or a
        degradation rules it out; returns the key it was stored under ("" when not stored)."""
        plan = state.plan
        if not plan.write:
            CACHE_WRITES.labels("policy").inc()
            return ""
        if answer.redacted:
            CACHE_WRITES.labels("redacted").inc()
            return ""
        if state.report.degraded:
            CACHE_WRITES.labels("degraded").inc()
            return ""
        ttl_s = state.tenant.cache_ttl_s
        await self._cache.put(state.key, answer.fresh, ttl_s)
        vector = state.question_vector
        # A session's turns stay out of the semantic index: its entries carry the
        # question's text, and DeleteSession must be able to remove everything a
        # session wrote (its exact keys are tracked by the session store).
        if plan.semantic and vector is not None and not state.request.session_id:
            await self._cache.add_vector(state.scope, state.question, vector, state.key, ttl_s)
        CACHE_WRITES.labels("stored").inc()
        return state.key
