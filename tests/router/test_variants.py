"""Model variants: sticky assignment, the operators' changes, and the automatic rollback's judgement."""

import asyncio
import collections

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.router.autorollback import Stats, Window, judge
from services.router.config import AutoRollbackSettings, RouterSettings
from services.router.metrics import ROLLBACKS, VARIANT_REQUESTS, VARIANT_WEIGHT
from services.router.variants import (CANARY, PROMOTED, ROLLED_BACK, STABLE, assign, initial, promoted,
                                      rolled_back, with_weights)
from tests.router.fakes import FakeGeneration, operations

USERS = [f"user-{n}" for n in range(2000)]


def split(rollout, users=USERS, tenant="acme") -> collections.Counter:
    return collections.Counter(assign(rollout, tenant, user) for user in users)


@pytest.mark.parametrize("weights", [
    {"full@1": 90, "full@2": 10},
    {"full@1": 50, "full@2": 50},
    {"full@1": 60, "full@2": 25, "full@3": 15},
], ids=["90-10", "50-50", "three-way"])
def test_assignment_follows_the_weights_within_two_percent_over_2000_users(weights):
    rollout = initial("full", "full@1", weights)
    counts = split(rollout)
    total = sum(weights.values())
    for variant, weight in weights.items():
        assert abs(counts[variant] / len(USERS) - weight / total) <= 0.02, (variant, counts)


def test_a_user_keeps_a_variant_and_a_growing_canary_only_takes_users_from_the_baseline():
    before = initial("full", "full@1", {"full@1": 90, "full@2": 10})
    assigned = {user: assign(before, "acme", user) for user in USERS}
    assert all(assign(before, "acme", user) == variant for user, variant in assigned.items())
    grown = with_weights(before, [("full@1", 75), ("full@2", 25)], "", "ops", "2026-01-01T00:00:00Z")
    after = {user: assign(grown, "acme", user) for user in USERS}
    moved = [user for user in USERS if after[user] != assigned[user]]
    assert moved and all(assigned[user] == "full@1" and after[user] == "full@2" for user in moved)
    shrunk = with_weights(grown, [("full@1", 95), ("full@2", 5)], "", "ops", "2026-01-01T00:00:00Z")
    back = [user for user in USERS if assign(shrunk, "acme", user) != after[user]]
    assert back and all(after[user] == "full@2" for user in back)


def test_the_split_is_per_tenant_and_alias():
    rollout = initial("full", "full@1", {"full@1": 50, "full@2": 50})
    acme = [assign(rollout, "acme", user) for user in USERS]
    globex = [assign(rollout, "globex", user) for user in USERS]
    assert acme != globex


def test_set_weights_promote_and_rollback_move_the_state():
    rollout = initial("full")
    assert (rollout.baseline, rollout.weights, rollout.state) == ("full", (("full", 100),), STABLE)
    canary = with_weights(rollout, [("full@2", 10), ("full@1", 90)], "full@1", "ops", "t1")
    assert canary.weights == (("full@1", 90), ("full@2", 10)) and canary.state == CANARY
    assert canary.canaries == ("full@2",) and canary.revision == 1 and canary.updated_by == "ops"
    back = rolled_back(canary, "manual", "too slow", "ops", "t2")
    assert back.weights == (("full@1", 100), ("full@2", 0)) and back.state == ROLLED_BACK
    assert (back.last_rollback.reason, back.last_rollback.variant, back.last_rollback.detail) == \
        ("manual", "full@2", "too slow")
    assert [assign(back, "acme", user) for user in USERS[:50]] == ["full@1"] * 50
    won = promoted(with_weights(back, [("full@1", 80), ("full@2", 20)], "", "ops", "t3"), "", "ops", "t4")
    assert (won.baseline, won.weights[0], won.state) == ("full@2", ("full@2", 100), PROMOTED)


@pytest.mark.parametrize("weights, baseline, error", [
    ([], "", InvalidArgument),
    ([("full@1", 0)], "full@1", InvalidArgument),
    ([("full@1", 90), ("full@1", 10)], "", InvalidArgument),
    ([("not a name", 10)], "", InvalidArgument),
    ([("full@2", 100)], "", InvalidArgument),  # the baseline (full) must be one of them
    ([("full", 0), ("full@2", 100)], "", InvalidArgument),  # the baseline must keep traffic
])
def test_bad_weights_are_refused(weights, baseline, error):
    with pytest.raises(error):
        with_weights(initial("full"), weights, baseline, "ops", "t")


def test_promote_and_rollback_need_a_canary():
    with pytest.raises(FailedPrecondition, match="no canary"):
        rolled_back(initial("full"), "manual", "", "ops", "t")
    with pytest.raises(FailedPrecondition, match="0 canaries"):
        promoted(initial("full"), "", "ops", "t")
    three = initial("full", "full", {"full": 80, "full@1": 10, "full@2": 10})
    with pytest.raises(FailedPrecondition, match="name the one"):
        promoted(three, "", "ops", "t")
    assert promoted(three, "full@2", "ops", "t").baseline == "full@2"


# The automatic rollback's judgement.

POLICY = AutoRollbackSettings(min_samples=20, error_rate_margin=0.05, latency_margin=0.5, min_latency_increase_s=0.05)


@pytest.mark.parametrize("baseline, canary, reason", [
    (Stats(100, 0.01, 0.20), Stats(30, 0.20, 0.21), "error_rate"),
    (Stats(100, 0.01, 0.20), Stats(30, 0.01, 0.45), "latency"),
    (Stats(100, 0.01, 0.20), Stats(30, 0.05, 0.25), None),     # within both margins
    (Stats(100, 0.01, 0.010), Stats(30, 0.01, 0.030), None),   # 3x slower, but by 20 ms only
    (Stats(100, 0.30, 0.90), Stats(30, 0.00, 0.10), None),     # a better canary stays
    (Stats(100, 0.00, 0.20), Stats(19, 1.00, 5.00), None),     # too few canary samples yet
    (Stats(19, 0.00, 0.20), Stats(30, 1.00, 5.00), None),      # too few baseline samples yet
], ids=["errors", "latency", "healthy", "noise", "better", "few-canary", "few-baseline"])
def test_judge(baseline, canary, reason):
    finding = judge(baseline, canary, POLICY)
    assert (finding.reason if finding else None) == reason
    if finding:
        assert "30 canary and 100 baseline requests" in finding.detail


def test_the_window_forgets_old_outcomes():
    now = [0.0]
    window = Window(60.0, 1000, clock=lambda: now[0])
    for _ in range(10):
        window.add(False, None)
    now[0] = 30.0
    for latency in range(1, 21):
        window.add(True, latency / 100)
    assert window.stats() == Stats(30, 10 / 30, 0.19)
    now[0] = 61.0
    assert window.stats() == Stats(20, 0.0, 0.19)


# Rollouts: the state every replica serves, in process here.

SETTINGS = RouterSettings(
    rollouts={"full": {"baseline": "full@1", "weights": {"full@1": 50, "full@2": 50}}},
    auto_rollback={"min_samples": 10, "error_rate_margin": 0.1},
)


def sample(rollouts, alias, variant, ok, latency_s=0.1):
    rollouts.record(alias, variant, ok=ok, latency_s=latency_s if ok else None)


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_degraded_canary_is_rolled_back_with_the_reason_and_an_audit_record():
    ops = operations(SETTINGS, FakeGeneration())
    rollouts = ops.rollouts
    before = ROLLBACKS.labels("full", "error_rate")._value.get()
    for n in range(10):
        sample(rollouts, "full", "full@1", ok=True)
        sample(rollouts, "full", "full@2", ok=n % 4 != 0)
    await settle()
    rollout = rollouts.get("full")
    assert rollout.state == ROLLED_BACK and rollout.weights == (("full@1", 100), ("full@2", 0))
    assert rollout.last_rollback.reason == "error_rate" and rollout.last_rollback.actor == "automatic"
    assert "canary error rate 0.300 vs baseline 0.000" in rollout.last_rollback.detail
    assert ROLLBACKS.labels("full", "error_rate")._value.get() == before + 1
    assert VARIANT_WEIGHT.labels("full", "full@2")._value.get() == 0
    assert VARIANT_REQUESTS.labels("full", "full@2", "error")._value.get() >= 3
    # Once rolled back, more bad outcomes change nothing.
    for _ in range(20):
        sample(rollouts, "full", "full@2", ok=False)
    await settle()
    assert rollouts.get("full").revision == rollout.revision


async def test_a_healthy_canary_keeps_its_traffic():
    rollouts = operations(SETTINGS, FakeGeneration()).rollouts
    for n in range(200):
        sample(rollouts, "full", "full@1", ok=n % 50 != 0)
        sample(rollouts, "full", "full@2", ok=n % 40 != 0)
    await settle()
    assert rollouts.get("full").state == CANARY


async def test_a_slow_canary_is_rolled_back_for_latency():
    rollouts = operations(SETTINGS, FakeGeneration()).rollouts
    for _ in range(10):
        sample(rollouts, "full", "full@1", ok=True, latency_s=0.2)
        sample(rollouts, "full", "full@2", ok=True, latency_s=0.6)
    await settle()
    assert rollouts.get("full").last_rollback.reason == "latency"


async def test_set_weights_refuses_variants_generation_does_not_serve():
    rollouts = operations(RouterSettings(), FakeGeneration()).rollouts
    with pytest.raises(InvalidArgument, match="serves no model 'full@9'"):
        await rollouts.set_weights("full", [("full", 90), ("full@9", 10)], "", "ops")
    with pytest.raises(NotFound, match="no alias"):
        await rollouts.set_weights("huge", [("full", 100)], "", "ops")
    rollout = await rollouts.set_weights("full", [("full", 90), ("full@2", 10)], "", "ops")
    assert rollout.state == CANARY and rollouts.get("full") == rollout


async def test_a_new_split_starts_a_new_comparison():
    rollouts = operations(SETTINGS, FakeGeneration()).rollouts
    for _ in range(9):
        sample(rollouts, "full", "full@1", ok=True)
        sample(rollouts, "full", "full@2", ok=False)
    await rollouts.set_weights("full", [("full@1", 80), ("full@2", 20)], "", "ops")
    sample(rollouts, "full", "full@1", ok=True)
    sample(rollouts, "full", "full@2", ok=False)
    await settle()
    assert rollouts.get("full").state == CANARY, "outcomes of the old split were counted"
