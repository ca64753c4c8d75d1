"""The chaos runs' judgement of each request against the degradation rules (evals/faults.py)."""

from evals.faults import RULES
from evals.traffic import Outcome

KILLED_AT = 10.0


def outcome(code: str = "OK", reason: str = "", *, started: float = 11.0, **fields) -> Outcome:
    return Outcome(kind="fresh", started=started, ended=started + 0.1, code=code, reason=reason, **fields)


def test_a_request_past_its_deadline_is_hung_whatever_the_rule():
    for rule in RULES.values():
        assert rule.judge(outcome("DEADLINE_EXCEEDED"), KILLED_AT) == "hung"
        assert rule.judge(outcome("HUNG"), KILLED_AT) == "hung"


def test_guardrails_down_fails_closed_with_retry_info_only():
    rule = RULES["guardrails"]
    assert rule.judge(outcome("UNAVAILABLE", "GUARDRAILS_UNAVAILABLE", retry_info=True), KILLED_AT) == "failed"
    assert rule.judge(outcome("UNAVAILABLE", "GUARDRAILS_UNAVAILABLE"), KILLED_AT) == "unexpected"
    assert rule.judge(outcome("OK", degraded=("guardrails_unavailable",)), KILLED_AT) == "unexpected"
    assert rule.judge(outcome(), KILLED_AT) == "clean"


def test_a_dead_router_replica_may_fail_only_the_calls_it_held():
    rule = RULES["router"]
    assert rule.judge(outcome("UNAVAILABLE", started=9.5), KILLED_AT) == "failed"
    assert rule.judge(outcome("UNAVAILABLE", started=10.5), KILLED_AT) == "unexpected"


def test_triton_down_allows_cached_answers_and_broken_streams():
    rule = RULES["triton"]
    assert rule.judge(outcome(degraded=("generation_unavailable",)), KILLED_AT) == "degraded"
    assert rule.judge(outcome(degraded=("retrieval_unavailable",)), KILLED_AT) == "unexpected"
    assert rule.judge(outcome("UNAVAILABLE", "UPSTREAM_UNAVAILABLE", after_text=True), KILLED_AT) == "failed"
    assert rule.judge(outcome("UNAVAILABLE", "UPSTREAM_UNAVAILABLE"), KILLED_AT) == "unexpected"


def test_no_failure_at_all_while_the_rate_limiter_or_redis_is_down():
    for name in ("ratelimit", "redis"):
        assert RULES[name].judge(outcome("UNAVAILABLE"), KILLED_AT) == "unexpected"
        assert RULES[name].judge(outcome("RESOURCE_EXHAUSTED"), KILLED_AT) == "unexpected"
