"""Chaos under load (`make chaos`, reports/chaos.json).

Starts the supervised suite with two router replicas and a shared Redis
(evals/suite.py), puts a collection in place for the retrieval requests, then runs
bounded open-loop traffic through Envoy (evals/traffic.py) and, one at a time, kills
each of these with SIGKILL: a router replica, Triton, Redis, guardrails, retrieval,
authz, the rate limiter and the generation service. Nobody brings them back but the
supervisor. Per fault the report has the requests that ended from the kill until
the suite was clean again, how they ended (OK, degraded and why, failed by code and
reason, hung past their deadline), the time until the process served again and until
its last failed or degraded request, judged against the degradation rules
(evals/faults.py, docs/reliability.md).

    .venv/bin/python evals/chaos.py [--rate 10] [--only triton,router]

Exits 1 when a target is missed: a hung request, a failure the rules do not name,
or a process that did not come back.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from llmsuite.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc  # noqa: E402

from evals.faults import RULES, inject, wait_steady  # noqa: E402
from evals.stats import percentile  # noqa: E402
from evals.suite import Suite  # noqa: E402
from evals.traffic import MIX, SUBJECTS, Traffic  # noqa: E402

COLLECTION = "chaos-kb"
# One at a time, in this order; "router" is the first of the two router replicas.
ORDER = ["router", "triton", "redis", "guardrails", "retrieval", "authz", "ratelimit", "generation"]


def ingest(suite: Suite) -> None:
    """A document per subject the fresh questions ask about, through the edge."""
    documents = [retrieval_pb2.Document(id=f"doc-{n}", title=subject.title(),
                                        text=f"Notes on {subject}: each case study of {subject} records one fact, "
                                             f"its date and the team that found it.")
                 for n, subject in enumerate(SUBJECTS)]
    with grpc.insecure_channel(suite.edge) as channel:
        retrieval_pb2_grpc.RetrievalServiceStub(channel).Upsert(
            retrieval_pb2.UpsertRequest(collection=COLLECTION, documents=documents),
            metadata=(("authorization", f"Bearer {suite.api_key}"),), timeout=120)


def baseline(traffic: Traffic, seconds: float) -> dict:
    started = traffic.now()
    time.sleep(seconds)  # the traffic runs meanwhile: this is the measured period
    ended = traffic.now()
    while any(t < ended for t in traffic.in_flight_since()):
        time.sleep(0.1)
    outcomes = [o for o in traffic.since(started) if o.started >= started and o.started < ended]
    latencies = [(o.ended - o.started) * 1000 for o in outcomes if o.ok]
    return {"seconds": round(ended - started, 1), "requests": len(outcomes),
            "clean": sum(1 for o in outcomes if o.clean), "hung": sum(1 for o in outcomes if o.hung),
            "not_clean": sorted({o.label for o in outcomes if not o.clean}),
            "latency_ms": {"p50": round(percentile(latencies, 50), 1), "p99": round(percentile(latencies, 99), 1)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10.0, help="requests a second, open loop")
    parser.add_argument("--deadline-s", type=float, default=10.0)
    parser.add_argument("--baseline-s", type=float, default=20.0)
    parser.add_argument("--settle-s", type=float, default=5.0,
                        help="clean requests needed after a process is back before the next fault")
    parser.add_argument("--only", default="", help="comma-separated processes to kill (default: all, in order)")
    parser.add_argument("--output", type=Path, default=REPO / "reports" / "chaos.json")
    args = parser.parse_args()
    order = [name for name in ORDER if not args.only or name in args.only.split(",")]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        suite = Suite(Path(tmp) / "var", routers=2)
        print("starting the suite ...", file=sys.stderr)
        suite.start(report=lambda line: print(f"  {line}", file=sys.stderr))
        traffic = None
        try:
            ingest(suite)
            traffic = Traffic(suite.edge, suite.api_key, args.rate, deadline_s=args.deadline_s,
                              collection=COLLECTION).start()
            ready = suite.ready()
            wait_steady(traffic, ready, quiet_s=3.0, timeout_s=120)
            steady = baseline(traffic, args.baseline_s)
            print(f"baseline: {steady}", file=sys.stderr)
            results = []
            for name in order:
                wait_steady(traffic, ready, quiet_s=3.0, timeout_s=180)
                print(f"killing {name} ...", file=sys.stderr)
                result = inject(name, suite.processes[name], ready[name], traffic, RULES[name],
                                settle_s=args.settle_s)
                print(f"  {result.to_dict()}", file=sys.stderr)
                results.append(result)
        finally:
            if traffic is not None:
                traffic.stop()
            suite.stop()
        edge_failures = suite.edge_failures()
    load_after = os.getloadavg()
    report = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in load_after]},
        "setup": {"rate_per_s": args.rate, "deadline_s": args.deadline_s, "mix": MIX, "router_replicas": 2,
                  "redis": "one, shared by the routers, the rate limiter and authz",
                  "models": "CPU stand-ins", "path": "client -> Envoy (authz, rate limits) -> router replicas",
                  "generator": {"skipped_for_outstanding_cap": traffic.skipped, "max_start_lag_s":
                                round(traffic.max_lag_s, 3)}},
        "baseline": steady,
        "faults": [result.to_dict() for result in results],
        # Envoy's view of every failed call of the run: gRPC status, response flags, upstream.
        "edge_failures": edge_failures,
        "supervisor": suite.reports,
    }
    report["targets"] = {
        "hung": {"target": 0, "measured": sum(r.hung for r in results)},
        "recovered_without_manual_step": all(r.restarted_by_supervisor and r.recovered_s is not None
                                             for r in results),
        "only_failures_the_rules_name": all(not r.unexpected for r in results),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    # The table docs/reliability.md and the README quote.
    print("| killed | requests | OK | degraded | failed (as the rules name) | unexpected | hung | back | recovered |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        failed = ", ".join(f"{n} {label}" for label, n in r.failed.items()) or "0"
        degraded = ", ".join(f"{n} {reason}" for reason, n in r.degraded.items()) or "0"
        print(f"| {r.process} | {r.requests} | {r.ok} | {degraded} | {failed} | {sum(r.unexpected.values())} | "
              f"{r.hung} | {r.back_s} s | {r.recovered_s} s |")
    return 0 if all(r.met for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
