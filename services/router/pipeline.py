"""The request pipeline, shared by unary and streaming calls: five stages over one RequestState.

  admit      validate; embed the question and check the input at the same time;
             session history; tier choice; the model's variant for this
             user; the template version                                    admission.py, input_check.py
  cache      exact, then semantic                                          caching.py
  documents  retrieved documents within the token budget (RAG only)        documents.py
  answer     the prompt; the budget (tokens, spend); the user's variant
             of the chosen model through the output check, stopped where
             the budget ends; full -> light; a cached answer when no
             model can                                                     answer.py, budgets.py, output_check.py
  finish     the one exit of every answer: cache write, session turn,
             the usage record and its consumers (usage counters, budget
             settlement, request log, audit record), metrics, the final
             message; a request that fails gets its audit record there     finish.py, usage.py, auditing.py

Each stage is a span of the request's trace when tracing is on (services/common/tracing.py):
admit (with the input check inside), cache, documents (RAG only), and per model tried
generation (with the output check inside).

Degradation: full model down -> light (degraded); retrieval down -> no documents
(degraded); guardrails down -> fail closed unless the tenant fails open (degraded);
every model down -> a cached answer (degraded) or UNAVAILABLE with RetryInfo.
"""

import asyncio
from typing import AsyncIterator

from services.common import tracing
from services.router.admission import Admission
from services.router.answer import Answering
from services.router.auditing import Auditing
from services.router.budgets import Budgets
from services.router.cache import ResponseCache
from services.router.caching import Caching
from services.router.config import RouterSettings
from services.router.counters import Counters
from services.router.documents import Documents
from services.router.events import Answer, Delta, Final
from services.router.feedback import RequestLog
from services.router.finish import Finish
from services.router.generation_client import GenerationClient
from services.router.guardrails_client import GuardrailsClient
from services.router.input_check import InputCheck
from services.router.output_check import OutputCheck
from services.router.prompt import SecretSource
from services.router.retrieval_client import RetrievalClient
from services.router.rollout import Rollouts
from services.router.sessions import SessionStore
from services.router.templates import Templates
from services.router.usage import Usage


class Pipeline:
    def __init__(self, settings: RouterSettings, generation: GenerationClient, guardrails: GuardrailsClient | None,
                 retrieval: RetrievalClient | None, cache: ResponseCache, sessions: SessionStore,
                 secrets: SecretSource, *, rollouts: Rollouts, templates: Templates, auditing: Auditing,
                 counters: Counters, requests: RequestLog):
        caching = Caching(settings, cache)
        self._admission = Admission(settings, retrieval, InputCheck(guardrails), sessions, rollouts, templates)
        self._caching = caching
        self._documents = Documents(retrieval)
        self._answering = Answering(settings, generation, OutputCheck(guardrails), caching, secrets, rollouts,
                                    Budgets(settings, counters))
        self._finish = Finish(settings, caching, sessions, Usage(settings, counters), requests, auditing)

    async def run(self, request, time_remaining: float | None, streaming: bool) -> AsyncIterator[Delta | Final]:
        """Yields released text (streaming calls only), then the Final message."""
        state = None
        try:
            with tracing.span("admit"):
                state = await self._admission.admit(request, time_remaining, streaming)
            with tracing.span("cache") as span:
                answer = await self._caching.lookup(state)
                span.set_attribute("llmsuite.cache.hit", answer is not None)
            if answer is None:
                documents = await self._documents.find(state)
                async for event in self._answering.answer(state, documents):
                    match event:
                        case Delta():
                            yield event
                        case Answer():
                            answer = event
            async for event in self._finish.finish(state, answer):
                yield event
        except (Exception, asyncio.CancelledError) as err:
            self._finish.failed(request, state, err)
            raise
