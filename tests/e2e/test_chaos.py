"""The short chaos case of `make test` (the whole run is `make chaos`, reports/chaos.json):
Triton killed with SIGKILL under light traffic through the secured edge. `make run`'s
supervisor brings it back with no manual step; meanwhile every request ends before
its deadline, and fails only as the degradation rules say (evals/faults.py)."""

import pytest

from evals.faults import RULES, inject, wait_steady
from evals.suite import readiness
from evals.traffic import Traffic

pytestmark = pytest.mark.integration


def test_triton_killed_under_traffic_is_back_and_no_request_hangs(stack, supervisor_reports):
    traffic = Traffic(f"127.0.0.1:{stack.ports.envoy}", stack.api_key, rate=5, deadline_s=10).start()
    try:
        ready = readiness(stack)
        wait_steady(traffic, ready, quiet_s=2.0, timeout_s=60)
        result = inject("triton", stack.processes["triton"], ready["triton"], traffic, RULES["triton"],
                        settle_s=3.0, timeout_s=90)
    finally:
        traffic.stop()
    print(result.to_dict())
    assert result.hung == 0
    assert result.unexpected == {}
    assert result.restarted_by_supervisor and result.back_s is not None and result.recovered_s is not None
    # The fault mattered: requests that needed a model while Triton was down failed as the rule says.
    assert result.failed.get("UNAVAILABLE GENERATION_UNAVAILABLE", 0) + sum(result.degraded.values()) > 0
    assert any(line.startswith("triton exited with signal SIGKILL") for line in supervisor_reports)
