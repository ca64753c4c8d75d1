"""Stage 4, answer: the prompt, the budget, the models to try, and each model's answer through the output check.

The prompt is the tenant's template (in the version admission took) around the
conversation and the documents, with a canary only this request's output check
knows. Before any model runs, the tenant's (and key's) budget must have room
(budgets.py): RESOURCE_EXHAUSTED otherwise. The chosen model's variant for this user
answers; every piece of text it releases is debited to the budget first, and where
the budget ends the answer stops (FINISH_REASON_BUDGET). When the variant cannot
answer (down, circuit open, overloaded) before any text reached the caller, the
light model's variant for this user does (full -> light, marked degraded), and when
no model can, a cached answer to the request (marked degraded) or UNAVAILABLE with
RetryInfo. A request that fails before its caller received any text gets its debit
back. Every variant's outcome goes to the rollouts (metrics, automatic rollback).
"""

import logging
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Sequence

from llmsuite.generation.v1 import generation_pb2
from llmsuite.inference.v1 import inference_pb2

from services.common import tracing
from services.common.context import request_id_var
from services.common.errors import Unavailable
from services.router.budgets import Budgets, Meter
from services.router.cache import CachedAnswer
from services.router.caching import Caching
from services.router.config import RouterSettings
from services.router.counters import Debit
from services.router.events import Answer, Delta, Verdict, finish_reason
from services.router.generation_client import GenerationClient, ModelUnavailable
from services.router.output_check import OutputCheck
from services.router.prompt import Document, SecretSource, build
from services.router.rollout import Rollouts
from services.router.state import TIER_NAMES, RequestState, detail
from services.router.tiers import TierChoice
from services.router.tokens import estimate_added, estimate_tokens, truncate_tokens

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A model to try, and its variant that serves this user."""

    choice: TierChoice
    variant: str


@dataclass
class _Release:
    """One model's answer as far as it went out: the text released within the budget."""

    pieces: list[str] = field(default_factory=list)
    # Output tokens of the released text that were debited (metered requests only).
    counted: int = 0
    verdict: Verdict | None = None
    # The budget ran out: the answer ends here.
    stopped: bool = False

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class Answering:
    def __init__(self, settings: RouterSettings, generation: GenerationClient, output_check: OutputCheck,
                 caching: Caching, secrets: SecretSource, rollouts: Rollouts, budgets: Budgets):
        self._settings = settings
        self._generation = generation
        self._output_check = output_check
        self._caching = caching
        self._secrets = secrets
        self._rollouts = rollouts
        self._budgets = budgets

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
        meter = await self._budgets.admit(state.tenant_id, state.tenant, state.key_id, candidates[0].choice.model,
                                          estimate_tokens(prompt))
        delivered = False
        try:
            async for event in self._first_answer(state, candidates, prompt, secrets.canary, meter):
                delivered = delivered or isinstance(event, Delta)
                yield event
        except BaseException:
            if not delivered:
                await meter.refund()
            raise

    async def _first_answer(self, state: RequestState, candidates: list[Candidate], prompt: str, canary: str,
                            meter: Meter) -> AsyncIterator[Delta | Answer]:
        """The first candidate that answers, else a cached answer; Deltas only on streaming calls."""
        for index, candidate in enumerate(candidates):
            release = _Release()
            try:
                async for text in self._release(meter, candidate.choice.model, release,
                                                self._attempt(state, candidate, prompt, canary)):
                    if state.streaming:
                        yield Delta(text)
            except ModelUnavailable as err:
                if state.streaming and release.pieces:
                    raise
                if index + 1 < len(candidates):
                    log.warning("model %s unavailable (%s); the light model answers", candidate.variant,
                                err.reason)
                    state.report.degrade("full_model_unavailable")
                    continue
                cached = await self._from_cache(state, candidate.choice.model, err, candidates)
                yield replace(cached, debit=meter.debit)
                return
            if release.stopped:
                yield self._stopped(state, candidate, prompt, release, meter.debit)
            else:
                yield self._answered(state, candidate, prompt, release.text, release.verdict, meter.debit)
            return

    async def _release(self, meter: Meter, model: str, release: _Release,
                       events: AsyncIterator[Delta | Verdict]) -> AsyncIterator[str]:
        """The checked text of one model's answer, as far as the budget has room; keeps the verdict."""
        async with aclosing(events):
            async for event in events:
                match event:
                    case Delta(text=text):
                        text = await self._within_budget(meter, model, release, text)
                        if text:
                            release.pieces.append(text)
                            yield text
                        if release.stopped:
                            # Leaving closes the output check, which cancels generation.
                            return
                    case Verdict():
                        release.verdict = event

    @staticmethod
    async def _within_budget(meter: Meter, model: str, release: _Release, text: str) -> str:
        """The part of `text` the budget lets out (all of it without limits); debits its tokens."""
        if not meter.limited:
            return text
        # Only the previous piece's end matters: whether `text` continues its last word.
        tokens = estimate_added(release.pieces[-1] if release.pieces else "", text)
        taken = await meter.take(tokens, model)
        release.counted += taken
        if taken == tokens:
            return text
        release.stopped = True
        # The first token of `text` may continue the previous piece's word: it was not counted again.
        return truncate_tokens(text, taken + (estimate_tokens(text) - tokens))

    async def _attempt(self, state: RequestState, candidate: Candidate, prompt: str,
                       canary: str) -> AsyncIterator[Delta | Verdict]:
        """One variant's answer through the output check, its outcome observed for the rollouts
        (an answer the budget stopped is neither)."""
        attributes = {**tracing.chat(candidate.variant, state.request.sampling.max_tokens),
                      "llmsuite.tier": TIER_NAMES[candidate.choice.tier]}
        with tracing.span("generation", attributes) as span:
            source = self._generation.stream(candidate.variant, prompt, state.request.sampling, state.deadline,
                                             whole=not state.streaming)
            checked = self._output_check.run(source, policy=state.tenant.guardrails_policy, canaries=[canary],
                                             restore_token=state.checked.restore_token, deadline=state.deadline,
                                             fail_open=state.tenant.guardrails_fail_open)
            with self._rollouts.observe(candidate.choice.model, candidate.variant) as observation:
                async with aclosing(checked):
                    async for event in checked:
                        if isinstance(event, Verdict) and event.completion is not None:
                            completion = event.completion
                            observation.latency_s = completion.elapsed_s
                            tracing.record_usage(span, completion.input_tokens, completion.output_tokens,
                                                 generation_pb2.FinishReason.Name(completion.finish_reason))
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

    def _stopped(self, state: RequestState, candidate: Candidate, prompt: str, release: _Release,
                 debit: Debit) -> Answer:
        """An answer the budget stopped: what went out, counted as it was debited."""
        choice = candidate.choice
        log.warning("the budget ran out mid-answer; the answer stops here",
                    extra={"model": choice.model, "variant": candidate.variant, "output_tokens": release.counted})
        return Answer(text=release.text, finish_reason=inference_pb2.FINISH_REASON_BUDGET, tier=choice.tier,
                      model=choice.model, model_version="", cache_status=state.plan.miss_status,
                      input_tokens=estimate_tokens(prompt), output_tokens=release.counted, debit=debit,
                      variant=candidate.variant)

    def _answered(self, state: RequestState, candidate: Candidate, prompt: str, text: str,
                  verdict: Verdict, debit: Debit) -> Answer:
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
                          output_tokens=verdict.generated_pieces, redacted=verdict.redacted, debit=debit,
                          variant=candidate.variant)
        fresh = CachedAnswer(text, completion.finish_reason, completion.input_tokens, completion.output_tokens,
                             choice.model, completion.model_version, choice.tier, candidate.variant)
        return Answer(text=text, finish_reason=finish_reason(completion.finish_reason), tier=choice.tier,
                      model=choice.model, model_version=completion.model_version,
                      cache_status=state.plan.miss_status, input_tokens=completion.input_tokens,
                      output_tokens=completion.output_tokens, generation_s=completion.elapsed_s, fresh=fresh,
                      redacted=verdict.redacted, debit=debit, variant=candidate.variant)
