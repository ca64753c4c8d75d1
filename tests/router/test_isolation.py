"""One tenant's abuse does not cut the others off (issue 14, defect 1), with real processes.

The attack of the issue: prompts dense in items for Presidio to report, from one
tenant, several at once. The issue used "1.1.1.1." repeated; guardrails' analysis is
linear now, and e-mail addresses cost most per character: 64 KB of "a@b.co " takes
about two seconds of guardrails' CPU here (the IP form about half that), so this
router's guardrails hop (capped at 1 s, half the default) runs out of time on every
one of them. Before, those timeouts opened the one guardrails breaker every tenant
shares, and the other tenant's requests failed with "input guardrails are
unavailable". Now the attacker holds at most two of the upstream's slots and its
timeouts open only its own breaker (reset after 1 s here, so the attacker keeps
probing, and loading guardrails, all through the victim's requests).

The attackers are paced (each waits half a second between requests, about twelve a
second in all): through the edge, the per-key rate limit (600 a minute by default)
paces them like this; unpaced, refused requests coming back at once would turn the
test into a load test of the router's own CPU.

The victim's latency is printed (baseline and under attack, measured here), not
asserted: timing belongs in reports.
"""

import itertools
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from llmsuite.inference.v1 import inference_pb2 as pb

from tests.harness import poll
from tests.router.support import ask, error_info, start_router

pytestmark = pytest.mark.integration

ATTACK = ("a@b.co " * 10_000)[:64_000]
ATTACKERS = 6
VICTIM_REQUESTS = 30
# Under attack the victim keeps asking at least this long: several of the attacker's
# breaker cycles (open 1 s, then a probe that runs out of time).
VICTIM_ATTACK_S = 8.0
SAMPLING = pb.SamplingParams(max_tokens=8)
ATTACK_PACE_S = 0.5
# The attack opens the attacker's breaker within a few of its requests; far longer
# means guardrails got fast enough to answer it within the hop's cap.
ATTACK_START_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def shared_router(log_dir, generation_port, side_services):
    router = start_router(log_dir, "router-isolation", {"tenants": {"default": {}, "attacker": {}, "victim": {}}}, {
        "generation_url": f"127.0.0.1:{generation_port}",
        "guardrails_url": f"127.0.0.1:{side_services['guardrails']}",
        "guardrails_timeout_s": 1.0, "max_in_flight_per_tenant": 2, "breaker_reset_s": 1.0,
        "max_prompt_chars": 65_536})
    yield router
    router.process.stop()


def victim_round(stub, label: str, at_least_s: float = 0.0) -> list[tuple[str, str, float]]:
    """At least VICTIM_REQUESTS ordinary questions, for at least `at_least_s` (each new, so
    none is a cache hit): (code, reason, seconds) of each."""
    outcomes = []
    until = time.monotonic() + at_least_s
    for n in itertools.count():
        if n >= VICTIM_REQUESTS and time.monotonic() >= until:
            return outcomes
        started = time.perf_counter()
        try:
            ask(stub, f"Which roses grow well in pots? ({label} {n})", tenant="victim", tier=pb.TIER_LIGHT,
                sampling=SAMPLING, timeout=30)
            outcome = ("OK", "")
        except grpc.RpcError as err:
            info = error_info(err)
            outcome = (err.code().name, info.reason if info else "")
        outcomes.append((*outcome, time.perf_counter() - started))


def test_one_tenants_pathological_prompts_leave_another_tenant_served(shared_router):
    stub = shared_router.stub()
    baseline = victim_round(stub, "baseline")
    assert all(code == "OK" for code, _, _ in baseline), baseline

    stop = threading.Event()
    attacker_outcomes: list[tuple[str, str]] = []

    def attack() -> None:
        while not stop.is_set():
            try:
                ask(stub, ATTACK, tenant="attacker", tier=pb.TIER_LIGHT, sampling=SAMPLING, timeout=30)
                attacker_outcomes.append(("OK", ""))
            except grpc.RpcError as err:
                info = error_info(err)
                attacker_outcomes.append((err.code().name, info.reason if info else ""))
            stop.wait(ATTACK_PACE_S)

    with ThreadPoolExecutor(ATTACKERS) as pool:
        attackers = [pool.submit(attack) for _ in range(ATTACKERS)]
        try:
            # The attack is under way once the attacker's timeouts have opened its own breaker.
            poll(lambda: shared_router.metric("llmsuite_router_upstream_rejected_total", upstream="guardrails",
                                              reason="tenant_breaker_open"),
                 "the attacker's breaker open (its requests running out of guardrails' time)",
                 timeout=ATTACK_START_TIMEOUT_S)
            under_attack = victim_round(stub, "attack", VICTIM_ATTACK_S)
        finally:
            stop.set()
        for future in attackers:
            future.result()

    base_ms = [seconds * 1000 for *_, seconds in baseline]
    attack_ms = [seconds * 1000 for *_, seconds in under_attack]
    print(f"victim latency baseline median {statistics.median(base_ms):.0f} ms, max {max(base_ms):.0f} ms; "
          f"under attack ({len(attack_ms)} requests) median {statistics.median(attack_ms):.0f} ms, "
          f"max {max(attack_ms):.0f} ms; "
          f"attacker outcomes {sorted(set(attacker_outcomes))} ({len(attacker_outcomes)} requests)")
    # Every request of the other tenant is answered, none refused as guardrails unavailable.
    assert [outcome for outcome in under_attack if outcome[0] != "OK"] == []
    # The attack was real: the attacker's requests ran out of time at guardrails and
    # the attacker alone was refused (its breaker, its share of the slots), fail closed.
    assert ("UNAVAILABLE", "GUARDRAILS_UNAVAILABLE") in attacker_outcomes
    assert set(attacker_outcomes) <= {("OK", ""), ("UNAVAILABLE", "GUARDRAILS_UNAVAILABLE")}, set(attacker_outcomes)
    assert shared_router.metric("llmsuite_router_upstream_rejected_total", upstream="guardrails",
                                reason="tenant_limit") > 0
    assert shared_router.metric("llmsuite_router_upstream_rejected_total", upstream="guardrails",
                                reason="breaker_open") == 0
    assert shared_router.metric("llmsuite_router_breaker_state", upstream="guardrails") == 0
