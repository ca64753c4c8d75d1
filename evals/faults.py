"""Faults for the chaos runs: kill one process with SIGKILL under traffic, let the
supervisor bring it back, and judge every request of that time against the
degradation rules (docs/reliability.md says the same in words).

A request fails "as the rules name" when its code, ErrorInfo reason and RetryInfo
are those the rule for the killed process allows, and, where the rule says so, only
if it was in flight when the process died or had already streamed text. Anything
else is unexpected; a request not answered before its deadline is hung.
"""

import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable

from evals.traffic import Outcome, Traffic
from services.stack.processes import ServiceProcess

ANY, IN_FLIGHT, AFTER_TEXT = "any request", "in flight at the kill", "after text was streamed"


@dataclass(frozen=True)
class Allowed:
    """A failure a rule allows: code and ErrorInfo reason (`label`), for which requests."""

    label: str
    retry_info: bool = False
    when: str = ANY

    def admits(self, outcome: Outcome, killed_at: float) -> bool:
        if outcome.label != self.label or (self.retry_info and not outcome.retry_info):
            return False
        if self.when == IN_FLIGHT:
            return outcome.started < killed_at
        if self.when == AFTER_TEXT:
            return outcome.after_text
        return True


@dataclass(frozen=True)
class Rule:
    """What the suite does while one process is down."""

    process: str
    says: str
    failures: tuple[Allowed, ...] = ()
    degraded: tuple[str, ...] = ()

    def judge(self, outcome: Outcome, killed_at: float) -> str:
        """"clean", "degraded", "failed" (as the rule names), "unexpected" or "hung"."""
        if outcome.hung:
            return "hung"
        if outcome.ok:
            if not outcome.degraded:
                return "clean"
            return "degraded" if set(outcome.degraded) <= set(self.degraded) else "unexpected"
        return "failed" if any(a.admits(outcome, killed_at) for a in self.failures) else "unexpected"


# Any stream that had sent text when a process behind it died ends with UNAVAILABLE
# (no retry and no fallback once text has reached the caller: docs/router.md).
_BROKEN_STREAM = Allowed("UNAVAILABLE UPSTREAM_UNAVAILABLE", when=AFTER_TEXT)
# What Envoy answers itself (no ErrorInfo): a reset upstream, or a filter that failed.
_EDGE_UNAVAILABLE = "UNAVAILABLE"

RULES = {
    "router": Rule("router", "a router replica down: the calls on its connections when it died fail with UNAVAILABLE "
                             "from Envoy; Envoy sends every other call to the other replica (it retries refused "
                             "connections on another host, and health checks take the dead one out)",
                   failures=(Allowed(_EDGE_UNAVAILABLE, when=IN_FLIGHT),)),
    "triton": Rule("triton", "Triton down: a cached answer of the same request (degraded: generation_unavailable), "
                             "else UNAVAILABLE GENERATION_UNAVAILABLE with RetryInfo; a stream already sending "
                             "text ends with UNAVAILABLE",
                   failures=(Allowed("UNAVAILABLE GENERATION_UNAVAILABLE", retry_info=True), _BROKEN_STREAM),
                   degraded=("generation_unavailable",)),
    "generation": Rule("generation", "the generation service down: as Triton down",
                       failures=(Allowed("UNAVAILABLE GENERATION_UNAVAILABLE", retry_info=True), _BROKEN_STREAM),
                       degraded=("generation_unavailable",)),
    "guardrails": Rule("guardrails", "guardrails down: fail closed, UNAVAILABLE GUARDRAILS_UNAVAILABLE with RetryInfo "
                                     "(input check, or an output check that had not answered yet); no unchecked text "
                                     "reaches a caller",
                       failures=(Allowed("UNAVAILABLE GUARDRAILS_UNAVAILABLE", retry_info=True),)),
    "retrieval": Rule("retrieval", "retrieval down: answers without documents (degraded: retrieval_unavailable); "
                                   "the semantic cache is skipped",
                      degraded=("retrieval_unavailable",)),
    "authz": Rule("authz", "authz down: Envoy denies every call that needs credentials with UNAVAILABLE "
                           "(ext_authz failure_mode_allow: false, fail closed)",
                  failures=(Allowed(_EDGE_UNAVAILABLE),)),
    "ratelimit": Rule("ratelimit", "the rate limiter down: Envoy lets calls through (ratelimit failure_mode_deny: "
                                   "false, the default; ratelimit_fail_closed denies instead)"),
    "redis": Rule("redis", "Redis down: cache misses and no session history (answers still come); the rate limiter "
                           "fails open (failure_mode: open, counted in its metrics); authz keeps the revocations it "
                           "last read and the keys file"),
}


@dataclass
class FaultResult:
    process: str
    rule: str
    requests: int = 0
    ok: int = 0
    degraded: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    unexpected: dict[str, int] = field(default_factory=dict)
    hung: int = 0
    # From the kill until the process served again (the supervisor's backoff and the start).
    back_s: float | None = None
    # From the kill until the end of the last request it failed or degraded (0: none).
    recovered_s: float | None = None
    restarted_by_supervisor: bool = False
    window_s: float = 0.0

    @property
    def met(self) -> bool:
        return (self.hung == 0 and not self.unexpected and self.restarted_by_supervisor
                and self.recovered_s is not None)

    def to_dict(self) -> dict:
        return {**asdict(self), "met": self.met}


def wait_steady(traffic: Traffic, ready: dict[str, Callable[[], bool]], quiet_s: float, timeout_s: float) -> None:
    """Until every process serves and the requests of the last `quiet_s` were all clean."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = traffic.now()
        recent = [o for o in traffic.since(now - quiet_s) if o.started >= now - quiet_s]
        if recent and all(o.clean for o in recent) and all(check() for check in ready.values()):
            return
        time.sleep(0.2)  # poll interval; the outcomes and health decide
    raise TimeoutError(f"the suite did not settle within {timeout_s:g} s")


def _recovered(traffic: Traffic, back_at: float, settle_s: float) -> bool:
    """Back, and the requests started in the last `settle_s` (all after it was back) were clean."""
    now = traffic.now()
    if now - back_at < settle_s:
        return False
    recent = [o for o in traffic.since(now - settle_s) if o.started >= now - settle_s]
    return bool(recent) and all(o.clean for o in recent)


def inject(process_name: str, process: ServiceProcess, ready: Callable[[], bool], traffic: Traffic, rule: Rule,
           *, settle_s: float = 5.0, timeout_s: float = 180.0) -> FaultResult:
    """Kills `process` (its whole process group, as a container dies) with SIGKILL under
    `traffic`, waits for the supervisor to bring it back and the requests to be clean
    again for `settle_s`, and judges every request that ended after the kill."""
    result = FaultResult(process_name, rule.says)
    killed_pid = process.proc.pid
    killed_at = traffic.now()
    process.signal(signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    back_at, recovered = None, False
    while time.monotonic() < deadline and not recovered:
        if back_at is None and process.alive() and process.proc.pid != killed_pid and ready():
            back_at = traffic.now()
        recovered = back_at is not None and _recovered(traffic, back_at, settle_s)
        time.sleep(0.1)  # poll interval; health and outcomes decide
    window_end = traffic.now()
    # Every request started within the window has ended by its deadline; wait for them.
    while any(started < window_end for started in traffic.in_flight_since()):
        time.sleep(0.1)
    outcomes = [o for o in traffic.since(killed_at) if o.started < window_end]
    verdicts = [(o, rule.judge(o, killed_at)) for o in outcomes]
    result.requests = len(outcomes)
    result.ok = sum(1 for o in outcomes if o.ok)
    result.degraded = dict(Counter(r for o, v in verdicts if v == "degraded" for r in o.degraded))
    result.failed = dict(Counter(o.label for o, v in verdicts if v == "failed"))
    result.unexpected = dict(Counter(f"{o.label} ({o.kind}){' degraded: ' + ','.join(o.degraded) if o.ok else ''}"
                                     for o, v in verdicts if v == "unexpected"))
    result.hung = sum(1 for _, v in verdicts if v == "hung")
    result.restarted_by_supervisor = process.proc.pid != killed_pid
    result.window_s = round(window_end - killed_at, 1)
    if back_at is not None:
        result.back_s = round(back_at - killed_at, 2)
    if recovered:
        affected = [o.ended for o, v in verdicts if v != "clean"]
        result.recovered_s = round(max(affected) - killed_at, 2) if affected else 0.0
    return result
