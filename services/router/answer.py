"""Stage 4, answer: the prompt, the models to try, and each model's answer through the output check.

The prompt is the tenant's template (in the version admission took) around the
conversation and the documents, with a canary only this request's output check
knows. The chosen model's variant for this user answers; when it cannot (down,
circuit open, overloaded) before any text reached the caller, the light model's
variant for this user does (full -> light, marked degraded), and when no model can,
a cached answer to the request (marked degraded) or UNAVAILABLE with RetryInfo.
Every variant's outcome goes to the rollouts (metrics, automatic rollback).
"""

import logging
from contextlib import aclosing
from dataclasses import dataclass
from typing import AsyncIterator, Sequence

from llmsuite.inference.v1 import inference_pb2

from services.common.context import request_id_var
from services.common.errors import Unavailable
from services.router.cache import CachedAnswer
from services.router.caching import Caching
from services.router.config import RouterSettings
from services.router.events import Answer, Delta, Verdict, finish_reason
from services.router.generation_client import GenerationClient, ModelUnavailable
from services.router.output_check import OutputCheck
from services.router.prompt import Document, SecretSource, build
from services.router.rollout import Rollouts
from services.router.state import RequestState, detail
from services.router.tiers import TierChoice
from services.router.tokens import estimate_tokens

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A model to try, and its variant that serves this user."""

    choice: TierChoice
    variant: str


class Answering:
    def __init__(self, settings: RouterSettings, generation: GenerationClient, output_check: OutputCheck,
                 caching: Caching, secrets: SecretSource, rollouts: Rollouts):
        self._settings = settings
        self._generation = generation
        self._output_check = output_check
        self._caching = caching
        self._secrets = secrets
        self._rollouts = rollouts

    def _candidates(self, state: RequestState) -> list[Candidate]:
        """The models to try, in order: the chosen one, then the light one where the full one may fall
        back; each in its variant for this user."""
        choice, light = state.choice, self._settings.light_model
        candidates = [Candidate(choice, state.variant)]
        if choice.tier == inference_pb2.TIER_FULL and state.tenant.fallback_to_light and choice.model != light:
            candidates.append(Candidate(TierChoice(inference_pb2.TIER_LIGHT, light, "fallback"),
                                        self._rollouts.assign(light, state.tenant_id, state.user_key)))
        return candidates

    async def answer(self, state: RequestState, documents: Sequence[Document]) -> AsyncIterator[Delta | Answer]:
        """Yields released text (streaming calls only), then the Answer."""
        secrets = self._secrets.for_request(request_id_var.get())
        prompt = build(state.template, state.conversation, secrets, documents)
        candidates = self._candidates(state)
        for index, candidate in enumerate(candidates):
            released: list[str] = []
            try:
                async for event in self._attempt(state, candidate, prompt, secrets.canary):
                    match event:
                        case Delta(text=text):
                            released.append(text)
                            if state.streaming:
                                yield event
                        case Verdict():
                            verdict = event
            except ModelUnavailable as err:
                if state.streaming and released:
                    raise
                if index + 1 < len(candidates):
                    log.warning("model %s unavailable (%s); the light model answers", candidate.variant,
                                err.reason)
                    state.report.degrade("full_model_unavailable")
                    continue
                yield await self._from_cache(state, candidate.choice.model, err, candidates)
                return
            yield self._answered(state, candidate, prompt, "".join(released), verdict)
            return

    async def _attempt(self, state: RequestState, candidate: Candidate, prompt: str,
                       canary: str) -> AsyncIterator[Delta | Verdict]:
        """One variant's answer through the output check, its outcome observed for the rollouts."""
        source = self._generation.stream(candidate.variant, prompt, state.request.sampling, state.deadline)
        checked = self._output_check.run(source, policy=state.tenant.guardrails_policy, canaries=[canary],
                                         restore_token=state.checked.restore_token, deadline=state.deadline,
                                         fail_open=state.tenant.guardrails_fail_open)
        with self._rollouts.observe(candidate.choice.model, candidate.variant) as observation:
            async with aclosing(checked):
                async for event in checked:
                    if isinstance(event, Verdict) and event.completion is not None:
                        observation.latency_s = event.completion.elapsed_s
                    yield event

    async def _from_cache(self, state: RequestState, model: str, err: ModelUnavailable,
                          candidates: Sequence[Candidate]) -> Answer:
        """No model can answer: a cached answer to the request (from any variant), or UNAVAILABLE."""
        variants = [state.variant, *(candidate.variant for candidate in candidates), *self._rollouts.variants()]
        answer = await self._caching.fallback(state, variants)
        if answer is None:
            raise Unavailable("no model can answer right now and no cached answer exists; retry later",
                              reason="GENERATION_UNAVAILABLE", metadata={"model": model},
                              retry_after_s=max(err.retry_after_s or 1.0, 0.1)) from None
        state.report.degrade("generation_unavailable")
        return answer

    def _answered(self, state: RequestState, candidate: Candidate, prompt: str, text: str,
                  verdict: Verdict) -> Answer:
        """A model's answer, as the output check let it through."""
        choice, report = candidate.choice, state.report
        report.verdicts["output"] = verdict.outcome
        if verdict.unchecked:
            report.degrade("guardrails_unavailable")
        report.add_findings("output", verdict.findings)
        completion = verdict.completion
        if verdict.blocked:
            log.warning("output guardrails stopped the answer", extra={"reasons": detail(verdict.reasons)})
        if completion is None:
            # Cut short: usage as far as it can be told.
            reason = inference_pb2.FINISH_REASON_CONTENT_FILTER if verdict.blocked else inference_pb2.FINISH_REASON_STOP
            return Answer(text=text, finish_reason=reason, tier=choice.tier, model=choice.model, model_version="",
                          cache_status=state.plan.miss_status, input_tokens=estimate_tokens(prompt),
                          output_tokens=verdict.generated_pieces, redacted=verdict.redacted,
                          variant=candidate.variant)
        fresh = CachedAnswer(text, completion.finish_reason, completion.input_tokens, completion.output_tokens,
                             choice.model, completion.model_version, choice.tier, candidate.variant)
        return Answer(text=text, finish_reason=finish_reason(completion.finish_reason), tier=choice.tier,
                      model=choice.model, model_version=completion.model_version,
                      cache_status=state.plan.miss_status, input_tokens=completion.input_tokens,
                      output_tokens=completion.output_tokens, generation_s=completion.elapsed_s, fresh=fresh,
                      redacted=verdict.redacted, variant=candidate.variant)
