"""Budgets and usage in process: the counter arithmetic, and the pipeline's admission, mid-stream stop,
settlement and refunds over fake clients (tests/router/fakes.py). Redis' Lua twin: test_budgets_redis.py."""

from datetime import date, datetime, timezone

import pytest
from llmsuite.inference.v1 import inference_pb2 as pb

from services.common.context import key_id_var, scopes_var, tenant_var
from services.common.errors import PermissionDenied, ResourceExhausted, Unavailable
from services.router.config import Budget, ModelPrice, RouterSettings, TenantSettings
from services.router.counters import DAY, MINUTE, MONTH, NANO, MemoryCounters, Subject, month_index, refused, \
    room, subject_prefix, window_bounds, window_keys
from services.router.tokens import estimate_tokens
from services.router.usage import Usage
from tests.router.fakes import FakeGeneration, FakeGuardrails, ask, build_pipeline

LIGHT = FakeGeneration.ANSWERS["light"]
PRICES = {"light": ModelPrice(input_per_1k=0.001, output_per_1k=0.002),
          "full": ModelPrice(input_per_1k=0.01, output_per_1k=0.02)}


def settings(**tenants: TenantSettings) -> RouterSettings:
    return RouterSettings(prices=PRICES, tenants={"default": TenantSettings(), **tenants})


def used(minute_tokens: int = 0, day_nano: int = 0, month_nano: int = 0) -> dict:
    return {MINUTE: {"tokens": minute_tokens}, DAY: {"cost": day_nano}, MONTH: {"cost": month_nano}}


def details(err) -> dict:
    """A ServiceError's google.rpc details by type name."""
    return {type(detail).__name__: detail for detail in err.details()}


# --- arithmetic -------------------------------------------------------------------------

def test_windows_are_utc_minute_day_and_calendar_month():
    now = datetime(2024, 2, 29, 23, 59, 30, tzinfo=timezone.utc).timestamp()
    keys = window_keys("p", now)
    assert keys == {MINUTE: f"p:m:{int(now // 60)}", DAY: f"p:d:{int(now // 86400)}", MONTH: "p:M:202402"}
    assert window_bounds(MINUTE, now) == (now - 30, now + 30)
    assert window_bounds(DAY, now)[1] == datetime(2024, 3, 1, tzinfo=timezone.utc).timestamp()
    assert window_bounds(MONTH, now) == (datetime(2024, 2, 1, tzinfo=timezone.utc).timestamp(),
                                         datetime(2024, 3, 1, tzinfo=timezone.utc).timestamp())
    def days(*ymd: int) -> int:
        return (date(*ymd) - date(1970, 1, 1)).days

    assert [month_index(days(*ymd)) for ymd in ((1970, 1, 1), (2024, 2, 29), (2024, 3, 1), (2024, 12, 31),
                                                (2025, 1, 1))] == [197001, 202402, 202403, 202412, 202501]


def test_a_limit_refuses_once_used_up_and_zero_is_unlimited():
    subject = Subject("p", tokens_per_minute=100, nano_per_day=5_000, nano_per_month=9_000)
    assert refused(subject, used(99, 4_999, 8_999)) is None
    assert refused(subject, used(100)) == MINUTE
    assert refused(subject, used(0, 5_000)) == DAY
    assert refused(subject, used(0, 0, 9_000)) == MONTH
    assert refused(Subject("p"), used(10**9, 10**12, 10**12)) is None


def test_room_is_the_tightest_limit_in_tokens():
    subject = Subject("p", tokens_per_minute=100, nano_per_day=10_000)
    assert room(subject, used(90), 50, nano_per_token=0.0) == 10
    # 10,000 - 9,000 nano left at 300 nano a token: 3 tokens.
    assert room(subject, used(0, 9_000), 50, nano_per_token=300.0) == 3
    assert room(subject, used(120), 50, 0.0) == 0, "never negative"
    assert room(Subject("p"), used(), 50, 300.0) == 50


async def test_memory_counters_admit_debit_and_record_atomically():
    now = [1_700_000_000.0]
    counters = MemoryCounters(clock=lambda: now[0])
    tenant, key = Subject("t", tokens_per_minute=100), Subject("k", tokens_per_minute=30)
    assert await counters.admit([tenant, key], 20, 1_000) is None
    assert await counters.debit([tenant, key], 25, 10.0) == 10, "the key's 30 tokens: 20 + 10"
    refusal = await counters.admit([tenant, key], 5, 0)
    assert (refusal.subject, refusal.window) == (1, MINUTE)
    fields, _ = await counters.read(tenant, MINUTE)
    assert fields == {"tokens": 30, "cost": 1_100}
    await counters.record([tenant], {"tokens": -5, "requests": 1})
    assert (await counters.read(tenant, DAY))[0] == {"tokens": 25, "cost": 1_100, "requests": 1}
    now[0] += 60
    assert (await counters.read(tenant, MINUTE))[0] == {}, "a new minute"
    assert (await counters.read(tenant, DAY))[0]["tokens"] == 25


# --- the pipeline ------------------------------------------------------------------------

async def read(counters: MemoryCounters, tenant: str, window: str = MINUTE, key_id: str = "") -> dict:
    return (await counters.read(Subject(subject_prefix(tenant, key_id)), window))[0]


async def probe(tenant: TenantSettings, counters: MemoryCounters, name: str):
    """A pipeline for tenant `name`, after one answer: (pipeline, that answer, the prompt's token estimate).

    The fake model counts prompt words (str.split), the router estimates tokens
    (tokens.py): admission debits the estimate and finish settles to the model's count.
    """
    generation = FakeGeneration()
    pipeline = build_pipeline(settings(**{name: tenant}), generation, FakeGuardrails(), counters=counters)
    _, answer = await ask(pipeline, "Which roses suit a balcony?", tenant=name, cache_policy=pb.CACHE_POLICY_BYPASS)
    return pipeline, answer, estimate_tokens(generation.prompts[-1][1])


async def test_a_stream_that_crosses_the_budget_stops_there_with_the_sent_tokens_counted():
    counters = MemoryCounters()
    _, first, prompt_tokens = await probe(TenantSettings(budget=Budget(tokens_per_minute=10_000)), counters, "tight")
    # Room for the same prompt and 3 of its answer's tokens.
    limit = first.usage.total_tokens + prompt_tokens + 3
    pipeline = build_pipeline(settings(tight=TenantSettings(budget=Budget(tokens_per_minute=limit))),
                              FakeGeneration(), FakeGuardrails(), counters=counters)
    released, final = await ask(pipeline, "Which roses suit a balcony?", tenant="tight", streaming=True,
                                cache_policy=pb.CACHE_POLICY_BYPASS)
    assert final.finish_reason == pb.FINISH_REASON_BUDGET
    assert "".join(released) == final.text == "Light answer: " and LIGHT.startswith(final.text)
    assert estimate_tokens(final.text) == final.usage.output_tokens == 3
    assert final.usage.input_tokens == prompt_tokens and final.cost_usd > 0
    usage = await read(counters, "tight")
    assert usage["tokens"] == limit and usage["output_tokens"] == first.usage.output_tokens + 3
    assert usage["requests"] == 2 and usage["tier_light"] == 2

    with pytest.raises(ResourceExhausted) as refused_err:
        await ask(pipeline, "Which tulips suit a balcony?", tenant="tight", streaming=True)
    err = refused_err.value
    assert err.reason == "BUDGET_EXCEEDED" and err.metadata == {"budget": "tokens_per_minute",
                                                                 "subject": "tenant:tight"}
    found = details(err)
    assert found["QuotaFailure"].violations[0].subject == "tenant:tight"
    assert 0 < found["RetryInfo"].retry_delay.seconds + found["RetryInfo"].retry_delay.nanos / 1e9 <= 60
    assert (await read(counters, "tight"))["tokens"] == limit, "a refused request debits nothing"


async def test_a_unary_answer_is_cut_at_the_budget_too():
    counters = MemoryCounters()
    pipeline, first, prompt_tokens = await probe(TenantSettings(budget=Budget(tokens_per_minute=10_000)),
                                                 counters, "tight")
    # Two tokens of room after the next prompt; "answer:" is two tokens, so only "answer" fits.
    await counters.record([Subject(subject_prefix("tight"))],
                          {"tokens": 10_000 - first.usage.total_tokens - prompt_tokens - 2})
    _, final = await ask(pipeline, "Which tulips suit a balcony?", tenant="tight")
    assert final.finish_reason == pb.FINISH_REASON_BUDGET and final.usage.output_tokens == 2
    assert final.text == "Light answer"
    assert (await read(counters, "tight"))["tokens"] == 10_000


async def test_a_spend_budget_per_day_stops_an_answer_and_then_refuses():
    counters = MemoryCounters()
    pipeline, first, prompt_tokens = await probe(TenantSettings(budget=Budget(usd_per_day=1.0)), counters,
                                                 "spender")
    # Light: 1,000 nano-dollars a prompt token, 2,000 an output token; room for the prompt and two.
    await counters.record([Subject(subject_prefix("spender"))],
                          {"cost": NANO - round(first.cost_usd * NANO) - prompt_tokens * 1_000 - 2 * 2_000})
    _, final = await ask(pipeline, "Which tulips suit a balcony?", tenant="spender")
    assert final.finish_reason == pb.FINISH_REASON_BUDGET and final.usage.output_tokens == 2
    assert (await read(counters, "spender", DAY))["cost"] == NANO
    with pytest.raises(ResourceExhausted) as err:
        await ask(pipeline, "Which lilies suit a balcony?", tenant="spender")
    assert err.value.metadata["budget"] == "usd_per_day"
    assert "until" in details(err.value)["QuotaFailure"].violations[0].description


async def test_a_key_budget_binds_one_key_and_not_the_others():
    counters = MemoryCounters()
    tenant = TenantSettings(key_budgets={"ci": Budget(tokens_per_minute=1)})
    pipeline = build_pipeline(settings(acme=tenant), FakeGeneration(), FakeGuardrails(), counters=counters)
    key_id_var.set("ci")
    try:
        await ask(pipeline, "Which roses suit a balcony?", tenant="acme")
        with pytest.raises(ResourceExhausted) as err:
            await ask(pipeline, "Which tulips suit a balcony?", tenant="acme")
        assert err.value.metadata["subject"] == "key:ci"
        key_id_var.set("other")
        _, final = await ask(pipeline, "Which tulips suit a balcony?", tenant="acme")
        assert final.finish_reason == pb.FINISH_REASON_STOP
    finally:
        key_id_var.set("")
    assert (await read(counters, "acme", key_id="ci"))["requests"] == 1
    assert (await read(counters, "acme"))["requests"] == 2


async def test_cache_hits_cost_nothing_and_count_as_savings():
    counters = MemoryCounters()
    pipeline = build_pipeline(settings(tight=TenantSettings(budget=Budget(tokens_per_minute=100_000))),
                              FakeGeneration(), FakeGuardrails(), counters=counters)
    _, first = await ask(pipeline, "Which roses suit a balcony?", tenant="tight")
    _, again = await ask(pipeline, "Which roses suit a balcony?", tenant="tight")
    assert again.tier == pb.TIER_CACHE and again.cost_usd == 0
    usage = await read(counters, "tight", DAY)
    assert usage["tokens"] == first.usage.total_tokens and usage["cost"] == round(first.cost_usd * NANO)
    assert usage["savings"] == round(first.cost_usd * NANO)
    assert (usage["requests"], usage["tier_cache"], usage["tier_light"]) == (2, 1, 1)


async def test_a_request_that_fails_before_any_text_gets_its_debit_back():
    counters = MemoryCounters()
    pipeline = build_pipeline(settings(tight=TenantSettings(budget=Budget(tokens_per_minute=100_000))),
                              FakeGeneration(down={"light", "full"}), FakeGuardrails(), counters=counters)
    with pytest.raises(Unavailable):
        await ask(pipeline, "Which roses suit a balcony?", tenant="tight", streaming=True)
    assert (await read(counters, "tight")).get("tokens", 0) == 0


async def test_usage_of_another_tenant_needs_the_admin_scope():
    counters = MemoryCounters()
    pipeline = build_pipeline(settings(), FakeGeneration(), FakeGuardrails(), counters=counters)
    _, answer = await ask(pipeline, "Which roses suit a balcony?", tenant="acme")
    usage = Usage(settings(), counters)
    tenant_var.set("acme")
    own = await usage.report(pb.GetUsageRequest(window=pb.USAGE_WINDOW_MONTH))
    assert (own.tenant, own.requests, own.total_tokens) == ("acme", 1, answer.usage.total_tokens)
    assert own.tiers.light == 1 and own.cost_usd == pytest.approx(answer.cost_usd)
    tenant_var.set("globex")
    with pytest.raises(PermissionDenied):
        await usage.report(pb.GetUsageRequest(tenant="acme"))
    scopes_var.set("inference admin")
    try:
        assert (await usage.report(pb.GetUsageRequest(tenant="acme"))).requests == 1
    finally:
        scopes_var.set("")
    assert (await usage.report(pb.GetUsageRequest())).requests == 0, "globex made none"
