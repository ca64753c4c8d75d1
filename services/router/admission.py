"""Stage 1, admit: who asks what, of which model, under which cache key.

Validation (tenant and key id only from the metadata the gateway sets), then the
question's embedding and the input check at the same time, then the session's
history, the tier choice, the chosen model's variant for this user and the
template version. They all belong here, before the cache: the exact cache key
covers the whole conversation and the template version, and cache entries are
kept per variant (an answer of a canary is not served to the baseline's users, nor
after the canary was rolled back).
"""

import asyncio
import logging
import time

import numpy as np

from services.common import tracing
from services.common.context import key_id_var, request_id_var, tenant_var
from services.common.errors import FailedPrecondition
from services.common.resilience import Deadline
from services.router.cache import Scope, exact_key, template_id
from services.router.config import RouterSettings, TenantSettings
from services.router.input_check import InputCheck
from services.router.metrics import TIER_CHOICES
from services.router.retrieval_client import RetrievalClient
from services.router.rollout import Rollouts
from services.router.sessions import SessionStore
from services.router.state import TIER_NAMES, UPSTREAM_DOWN, CheckedInput, Report, RequestState, cache_plan
from services.router.templates import Templates
from services.router.tiers import TierChoice, choose
from services.router.validation import InferenceRequest, Turn, validate

log = logging.getLogger(__name__)


class Admission:
    def __init__(self, settings: RouterSettings, retrieval: RetrievalClient | None, input_check: InputCheck,
                 sessions: SessionStore, rollouts: Rollouts, templates: Templates):
        self._settings = settings
        self._retrieval = retrieval
        self._input_check = input_check
        self._sessions = sessions
        self._rollouts = rollouts
        self._templates = templates

    async def admit(self, request, time_remaining: float | None, streaming: bool) -> RequestState:
        """The validated, checked request; raises what the caller must fix or retry."""
        started = time.perf_counter()
        settings = self._settings
        tenant_id = tenant_var.get()
        tenant = settings.tenant(tenant_id)
        inference = validate(request, settings, tenant)
        rag = bool(inference.retrieval_collection)
        if rag and self._retrieval is None:
            raise FailedPrecondition("retrieval is not configured on this deployment; send the request without "
                                     "retrieval.collection", reason="RETRIEVAL_NOT_CONFIGURED")
        deadline = Deadline(settings.request_timeout_s if time_remaining is None else max(time_remaining, 0.001))
        report = Report()
        wanted = cache_plan(inference.cache_policy, tenant, temperature=inference.sampling.temperature)
        checked, vector = await self._check_and_embed(inference, tenant, deadline, report,
                                                      embed=rag or wanted.semantic)
        history: tuple[Turn, ...] = ()
        if inference.session_id:
            history = await self._sessions.history(tenant_id, inference.session_id, tenant.history_turns)
        choice = self._choose(inference, history + checked.turns, rag)
        key_id = key_id_var.get()
        user_key = inference.user or key_id or request_id_var.get()
        variant = self._rollouts.assign(choice.model, tenant_id, user_key)
        template = self._templates.active(tenant.template)
        scope = Scope(tenant_id, variant, template_id(tenant.template, template), inference.sampling,
                      (inference.retrieval_collection, inference.retrieval_top_k, inference.retrieval_score_threshold))
        return RequestState(request=inference, tenant_id=tenant_id, tenant=tenant, key_id=key_id,
                            deadline=deadline, streaming=streaming, started=started, report=report,
                            checked=checked, vector=vector, history=history, choice=choice, variant=variant, user_key=user_key, template=template,
                            scope=scope, key=exact_key(scope, history + checked.turns), wanted=wanted)

    async def _check_and_embed(self, inference: InferenceRequest, tenant: TenantSettings, deadline: Deadline,
                               report: Report, *, embed: bool) -> tuple[CheckedInput, np.ndarray | None]:
        # The embedding (retrieval service) and the input check (guardrails, which runs
        # its own tuned encoder) are independent calls: run them at the same time.
        embedding = None
        if embed and self._retrieval is not None:
            embedding = asyncio.ensure_future(self._embed(inference.turns[-1].content, deadline))
        try:
            with tracing.span("input check") as span:
                checked = await self._input_check.check(inference, tenant, deadline, report)
                span.set_attribute("llmsuite.guardrails.verdict", report.verdicts.get("input", "unchecked"))
        except BaseException:
            if embedding is not None:
                embedding.cancel()
            raise
        return checked, await embedding if embedding is not None else None

    async def _embed(self, text: str, deadline: Deadline) -> np.ndarray | None:
        """The question's embedding, or None when retrieval cannot give one now."""
        try:
            return await self._retrieval.embed(text, deadline)
        except UPSTREAM_DOWN as err:
            log.warning("embedding unavailable: %s", err.message)
            deadline.check()
            return None

    def _choose(self, inference: InferenceRequest, conversation: tuple[Turn, ...], rag: bool) -> TierChoice:
        """Light or full, from the complexity estimate or what the request pins."""
        choice = choose(self._settings, pinned_model=inference.model, pinned_tier=inference.tier,
                        user_text=conversation[-1].content,
                        conversation_turns=sum(1 for turn in conversation if turn.role == "user"), rag=rag,
                        max_tokens=inference.sampling.max_tokens)
        TIER_CHOICES.labels(TIER_NAMES[choice.tier], choice.basis).inc()
        return choice
