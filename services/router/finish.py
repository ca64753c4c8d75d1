"""Stage 5, finish: the one exit of every answer (cache hit, model answer, cached fallback).

Releases what the caller has not received yet (a cached answer's text, on a stream),
offers a fresh answer to the cache, adds the session turn (with the cache key it
wrote, so DeleteSession can remove it), builds the request's one UsageRecord and
hands it to its consumers (usage counters and budget settlement, the request log
that feedback checks, the audit record: queued before the final message goes out,
so every answered request has one), and builds the final message. A request that
fails gets its audit record from `failed`.
"""

import logging
import time
from typing import AsyncIterator

from llmsuite.inference.v1 import inference_pb2

from services.common.context import request_id_var
from services.router.auditing import Auditing
from services.router.caching import Caching
from services.router.config import RouterSettings
from services.router.events import Answer, Delta, Final
from services.router.feedback import RequestLog
from services.router.metrics import ANSWERS, COST, OVERHEAD, TOKENS
from services.router.pricing import cost_usd
from services.router.sessions import SessionStore
from services.router.state import TIER_NAMES, RequestState
from services.router.usage import Usage, UsageRecord, finding_names
from services.router.validation import Turn

log = logging.getLogger(__name__)


class Finish:
    def __init__(self, settings: RouterSettings, caching: Caching, sessions: SessionStore, usage: Usage,
                 requests: RequestLog, auditing: Auditing):
        self._settings = settings
        self._caching = caching
        self._sessions = sessions
        self._usage = usage
        self._requests = requests
        self._auditing = auditing

    async def finish(self, state: RequestState, answer: Answer) -> AsyncIterator[Delta | Final]:
        """Yields the text the caller has not received yet (streaming only), then the Final message."""
        if state.streaming and answer.from_cache and answer.text:
            yield Delta(answer.text)
        cache_key = await self._caching.store(state, answer) if answer.fresh is not None else ""
        if state.request.session_id and (answer.fresh is not None or answer.from_cache):
            await self._remember(state, answer.text, cache_key)
        cost = self._account(state, answer)
        record = self._record(state, answer, cost)
        await self._usage.record(record, answer.debit)
        await self._requests.remember(record)
        self._auditing.answered(record, state, answer.text)
        overhead_s = max(time.perf_counter() - state.started - answer.generation_s, 0.0)
        OVERHEAD.observe(overhead_s)
        report = state.report
        log.info("answered", extra={"model": answer.model, "variant": answer.variant, "tier": TIER_NAMES[answer.tier],
                                    "input_tokens": answer.input_tokens, "output_tokens": answer.output_tokens,
                                    "degraded": report.degraded,
                                    "cache": inference_pb2.CacheStatus.Name(answer.cache_status)})
        yield Final(inference_pb2.GenerateResponse(
            text=answer.text,
            finish_reason=answer.finish_reason,
            usage=inference_pb2.Usage(input_tokens=answer.input_tokens, output_tokens=answer.output_tokens,
                                      total_tokens=answer.input_tokens + answer.output_tokens),
            cost_usd=cost,
            tier=answer.tier,
            model=answer.model,
            model_version=answer.model_version,
            cache_status=answer.cache_status,
            # A cached answer's sources are not kept with it.
            sources=[] if answer.from_cache else report.sources,
            guardrail_findings=report.findings,
            degraded=bool(report.degraded),
            degraded_reasons=report.degraded,
            request_id=request_id_var.get(),
            overhead_ms=overhead_s * 1000,
            session_id=state.request.session_id or "",
            model_variant=answer.variant,
            template_version=state.template.version,
        ))

    def failed(self, request, state: RequestState | None, err: BaseException) -> None:
        """The exit of a request that ends with an error: its audit record (`state` is None
        when admission refused it)."""
        self._auditing.failed(request, state, err)

    def _account(self, state: RequestState, answer: Answer) -> float:
        """Counts the answer, its tokens and its cost by tenant and variant (nothing was
        generated for a cached one)."""
        ANSWERS.labels(TIER_NAMES[answer.tier], answer.model).inc()
        if answer.from_cache:
            return 0.0
        cost = cost_usd(self._settings.prices, answer.model, answer.input_tokens, answer.output_tokens)
        COST.labels(state.tenant_id, answer.model, answer.variant).inc(cost)
        TOKENS.labels(state.tenant_id, answer.model, answer.variant, "input").inc(answer.input_tokens)
        TOKENS.labels(state.tenant_id, answer.model, answer.variant, "output").inc(answer.output_tokens)
        return cost

    def _record(self, state: RequestState, answer: Answer, cost: float) -> UsageRecord:
        """The request's one record for usage, feedback and audit: what happened, never the text.
        A cached answer reports the variant that first produced it."""
        source = answer.source
        savings = 0.0 if source is None else cost_usd(self._settings.prices, source.model, source.input_tokens,
                                                      source.output_tokens)
        return UsageRecord(
            at=time.time(), request_id=request_id_var.get(), tenant=state.tenant_id, key_id=state.key_id,
            model=answer.model, model_version=answer.model_version, variant=answer.variant,
            template=state.tenant.template, template_version=state.template.version, tier=answer.tier,
            cache_status=answer.cache_status, finish_reason=answer.finish_reason, input_tokens=answer.input_tokens,
            output_tokens=answer.output_tokens, cost_usd=cost, cache_savings_usd=savings,
            degraded=tuple(state.report.degraded), findings=finding_names(state.report.findings),
            streaming=state.streaming)

    async def _remember(self, state: RequestState, text: str, cache_key: str) -> None:
        new = [turn for turn in state.checked.turns if turn.role != "system"]
        await self._sessions.append(state.tenant_id, state.request.session_id, [*new, Turn("assistant", text)],
                                    cache_key=cache_key, cache_ttl_s=state.tenant.cache_ttl_s)
