"""Budgets, usage, sessions and feedback on real processes: two router replicas sharing one Redis,
on Triton's stand-in models (the job workers: test_worker.py)."""

import concurrent.futures

import grpc
import pytest
import redis
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from llmsuite.inference.v1 import inference_pb2 as pb

from services.router.config import PromptTemplate
from services.router.counters import subject_prefix
from services.router.sessions import session_key
from services.router.tokens import truncate_tokens
from services.router.validation import Turn
from tests.harness import assert_grpc_error
from tests.router.conftest import (SHARED_TOKENS_PER_MINUTE, STOP_BUDGET_USD, STOP_PROMPT_TOKENS, STOP_QUESTION,
                                   STOP_REQUEST_ID, STOP_TOKENS)
from tests.router.support import GARDEN, ask, ask_stream, error_info, expected_answer, model_prompt

pytestmark = pytest.mark.integration

LIGHT = pb.SamplingParams(max_tokens=48)


def detail(err: grpc.RpcError, kind):
    status = rpc_status.from_call(err)
    for item in status.details if status else ():
        if item.Is(kind.DESCRIPTOR):
            found = kind()
            item.Unpack(found)
            return found
    return None


def usage(stub, caller: str, window=pb.USAGE_WINDOW_DAY, **fields) -> pb.GetUsageResponse:
    """GetUsage as tenant `caller` (fields: of the request, and extra `metadata`)."""
    metadata = [("x-llmsuite-tenant", caller), *fields.pop("metadata", ())]
    return stub.GetUsage(pb.GetUsageRequest(window=window, **fields), metadata=metadata, timeout=10)


@pytest.fixture(scope="module")
def replicas(redis_routers):
    return [replica.stub() for replica in redis_routers]


def test_a_request_over_budget_before_it_starts_is_resource_exhausted_with_quota_failure_and_retry_info(replicas):
    # The first request is admitted (the minute's budget had room) and uses it up.
    refused = None
    for attempt in range(3):
        try:
            ask(replicas[attempt % 2], f"Which fern suits a dark hall? ({attempt})", tenant="capped", sampling=LIGHT,
                tier=pb.TIER_LIGHT)
        except grpc.RpcError as err:
            refused = err
            break
    assert refused is not None, "three requests passed a budget of one token a minute"
    assert_grpc_error(refused, grpc.StatusCode.RESOURCE_EXHAUSTED, "tokens_per_minute", "tenant:capped")
    info = error_info(refused)
    assert info.reason == "BUDGET_EXCEEDED" and info.metadata["budget"] == "tokens_per_minute"
    quota = detail(refused, error_details_pb2.QuotaFailure)
    assert quota.violations[0].subject == "tenant:capped" and "tokens_per_minute" in quota.violations[0].description
    retry = detail(refused, error_details_pb2.RetryInfo)
    assert 0 < retry.retry_delay.ToMilliseconds() <= 60_000


def test_a_stream_that_crosses_its_budget_stops_there_and_counts_what_it_sent(replicas):
    stream = ask_stream(replicas[1], STOP_QUESTION, tenant="daycap", request_id=STOP_REQUEST_ID,
                        tier=pb.TIER_LIGHT, sampling=pb.SamplingParams(max_tokens=96),
                        cache_policy=pb.CACHE_POLICY_BYPASS)
    messages = list(stream)
    final = messages[-1].final
    prompt = model_prompt(PromptTemplate(), [Turn("user", STOP_QUESTION)], STOP_REQUEST_ID)
    whole = expected_answer("light", prompt, 96)
    sent = "".join(m.text_delta for m in messages[:-1])
    assert final.finish_reason == pb.FINISH_REASON_BUDGET
    assert sent == final.text == truncate_tokens(whole, STOP_TOKENS) and len(whole) > len(sent)
    assert (final.usage.input_tokens, final.usage.output_tokens) == (STOP_PROMPT_TOKENS, STOP_TOKENS)
    assert final.cost_usd == pytest.approx(STOP_BUDGET_USD)
    # Counted where the other replica reads it, and the day's budget is now used up.
    day = usage(replicas[0], "daycap")
    assert (day.requests, day.input_tokens, day.output_tokens) == (1, STOP_PROMPT_TOKENS, STOP_TOKENS)
    assert day.cost_usd == pytest.approx(STOP_BUDGET_USD) and day.budget_usd == pytest.approx(STOP_BUDGET_USD)
    with pytest.raises(grpc.RpcError) as refused:
        ask(replicas[0], "And which climb a wall?", tenant="daycap", tier=pb.TIER_LIGHT, sampling=LIGHT)
    assert_grpc_error(refused.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "usd_per_day")
    assert detail(refused.value, error_details_pb2.QuotaFailure) is not None


def test_two_replicas_together_pass_a_token_budget_by_at_most_one_request(replicas, redis_url):
    def one(n: int):
        try:
            return ask(replicas[n % 2], f"Name garden plant number {n} that likes sun.", tenant="shared",
                       sampling=LIGHT, tier=pb.TIER_LIGHT, cache_policy=pb.CACHE_POLICY_BYPASS, timeout=60)
        except grpc.RpcError as err:
            return err

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(one, range(60)))
    answers = [o for o in outcomes if isinstance(o, pb.GenerateResponse)]
    refused = [o for o in outcomes if isinstance(o, grpc.RpcError)]
    assert all(err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for err in refused), refused[:1]
    assert refused and answers, "the budget let every request through or none"
    # Per minute window, as Redis counted it (a run may span two windows).
    client = redis.Redis.from_url(redis_url)
    windows = {key: int(client.hget(key, "tokens") or 0)
               for key in client.scan_iter(f"{subject_prefix('shared')}:m:*")}
    # The bound docs/router.md states: one request's prompt (a request's tokens, and then some).
    largest_prompt = max(a.usage.input_tokens for a in answers)
    assert all(tokens <= SHARED_TOKENS_PER_MINUTE + largest_prompt for tokens in windows.values()), windows
    assert sum(windows.values()) == sum(a.usage.total_tokens for a in answers)
    assert max(windows.values()) >= SHARED_TOKENS_PER_MINUTE, "the budget was reached"


def test_get_usage_matches_the_requests_made_on_both_replicas(replicas):
    tenant = "usage-probe"
    first = ask(replicas[0], "Which herbs grow on a windowsill?", tenant=tenant, tier=pb.TIER_LIGHT, sampling=LIGHT)
    hit = ask(replicas[1], "Which herbs grow on a windowsill?", tenant=tenant, tier=pb.TIER_LIGHT, sampling=LIGHT)
    streamed = list(ask_stream(replicas[1], "Which herbs need full sun?", tenant=tenant, tier=pb.TIER_LIGHT,
                               sampling=LIGHT))[-1].final
    full = ask(replicas[0], "Compare clay and sandy soil in detail.", tenant=tenant, tier=pb.TIER_FULL,
               sampling=LIGHT)
    assert hit.tier == pb.TIER_CACHE and first.tier == streamed.tier == pb.TIER_LIGHT and full.tier == pb.TIER_FULL
    generated = [first, streamed, full]
    for window in (pb.USAGE_WINDOW_DAY, pb.USAGE_WINDOW_MONTH):
        report = usage(replicas[1], tenant, window)
        assert report.tenant == tenant and report.window == window and report.window_start.seconds > 0
        assert report.requests == 4
        assert report.input_tokens == sum(a.usage.input_tokens for a in generated)
        assert report.output_tokens == sum(a.usage.output_tokens for a in generated)
        assert report.total_tokens == report.input_tokens + report.output_tokens
        assert report.cost_usd == pytest.approx(sum(a.cost_usd for a in generated), abs=1e-9)
        assert report.cache_savings_usd == pytest.approx(first.cost_usd, abs=1e-9)
        assert (report.tiers.cache, report.tiers.light, report.tiers.full) == (1, 2, 1)
    with pytest.raises(grpc.RpcError) as denied:
        usage(replicas[0], "someone-else", tenant=tenant)
    assert_grpc_error(denied.value, grpc.StatusCode.PERMISSION_DENIED, "admin")
    admin = usage(replicas[0], "operator", tenant=tenant, metadata=[("x-llmsuite-scopes", "inference admin")])
    assert admin.tenant == tenant and admin.requests == 4


def test_a_deleted_session_leaves_no_history_and_no_cached_answer(replicas, redis_url):
    tenant, session = "session-probe", "trip-1"
    first = ask(replicas[0], "Which bulbs flower in March?", tenant=tenant, session_id=session, sampling=LIGHT,
                tier=pb.TIER_LIGHT)
    ask(replicas[1], "And in April?", tenant=tenant, session_id=session, sampling=LIGHT, tier=pb.TIER_LIGHT)
    metadata = [("x-llmsuite-tenant", tenant)]
    stored = replicas[1].GetSession(pb.GetSessionRequest(session_id=session), metadata=metadata, timeout=10).session
    assert [m.content for m in stored.turns][:2] == ["Which bulbs flower in March?", first.text]
    assert len(stored.turns) == 4 and stored.expires_at.seconds > stored.updated_at.seconds
    listed = replicas[0].ListSessions(pb.ListSessionsRequest(), metadata=metadata, timeout=10)
    assert [s.session_id for s in listed.sessions] == [session]
    with pytest.raises(grpc.RpcError) as other:
        replicas[0].GetSession(pb.GetSessionRequest(session_id=session), metadata=[("x-llmsuite-tenant", "acme")],
                               timeout=10)
    assert other.value.code() == grpc.StatusCode.NOT_FOUND

    deleted = replicas[1].DeleteSession(pb.DeleteSessionRequest(session_id=session), metadata=metadata, timeout=10)
    assert deleted.cached_answers_deleted == 2
    with pytest.raises(grpc.RpcError) as gone:
        replicas[0].GetSession(pb.GetSessionRequest(session_id=session), metadata=metadata, timeout=10)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert replicas[0].ListSessions(pb.ListSessionsRequest(), metadata=metadata, timeout=10).sessions == []
    client = redis.Redis.from_url(redis_url)
    assert not client.exists(session_key(tenant, session))
    # The first turn's answer was cached under the key a sessionless request has: gone too.
    again = ask(replicas[0], "Which bulbs flower in March?", tenant=tenant, sampling=LIGHT, tier=pb.TIER_LIGHT)
    assert again.cache_status == pb.CACHE_STATUS_MISS
    # The same session id starts afresh: no earlier turn reaches the model.
    fresh = ask(replicas[1], "And in April?", tenant=tenant, session_id=session, sampling=LIGHT, tier=pb.TIER_LIGHT,
                request_id="rid-fresh", cache_policy=pb.CACHE_POLICY_BYPASS)
    alone = ask(replicas[1], "And in April?", tenant=tenant, sampling=LIGHT, tier=pb.TIER_LIGHT,
                request_id="rid-fresh", cache_policy=pb.CACHE_POLICY_BYPASS)
    assert fresh.text == alone.text and fresh.usage.input_tokens == alone.usage.input_tokens


def test_feedback_is_refused_for_another_tenants_request_and_counted_for_its_own(replicas, redis_routers):
    answer = ask(replicas[0], "How often should a fern be watered?", tenant="acme", request_id="rid-feedback",
                 sampling=LIGHT, tier=pb.TIER_LIGHT)
    feedback = pb.FeedbackRequest(request_id=answer.request_id, stars=4, task_completed=True, comment="clear")
    with pytest.raises(grpc.RpcError) as refused:
        replicas[1].Feedback(feedback, metadata=[("x-llmsuite-tenant", "globex")], timeout=10)
    assert_grpc_error(refused.value, grpc.StatusCode.NOT_FOUND, "rid-feedback")
    before = redis_routers[1].metric("llmsuite_router_feedback_total", tenant="acme", template=f"garden@{GARDEN.version}",
                                     rating="positive")
    reply = replicas[1].Feedback(feedback, metadata=[("x-llmsuite-tenant", "acme")], timeout=10)
    assert reply.rating == 0.5
    with pytest.raises(grpc.RpcError) as twice:
        replicas[0].Feedback(feedback, metadata=[("x-llmsuite-tenant", "acme")], timeout=10)
    assert twice.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert redis_routers[1].metric("llmsuite_router_feedback_total", tenant="acme", template=f"garden@{GARDEN.version}",
                                   rating="positive") == before + 1
    assert redis_routers[1].metric("llmsuite_router_task_completion_total", tenant="acme", completed="true") >= 1
