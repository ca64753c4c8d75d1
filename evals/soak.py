"""Soak at half of saturation (`make soak`, reports/soak.json).

Starts the supervised suite with two router replicas and a shared Redis
(evals/suite.py), measures saturation briefly (closed-loop callers sending back to
back through Envoy, the chaos runs' request mix) unless `--saturation` gives it, then
runs open-loop traffic at half of it for `--minutes` (10). Reports the error rate,
latency per minute and the p99 drift (last minute against the first), and each
process's resident memory and open file descriptors at the start and the end of the
measured period (after a warm-up), with their growth (target < 10 %).

    .venv/bin/python evals/soak.py [--minutes 10] [--saturation REQ_PER_S]

Not part of `make test`. Timing is for the machine it runs on; the report records the
load average, since a shared machine's other work shows in the numbers.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from evals.chaos import COLLECTION, ingest  # noqa: E402
from evals.stats import percentile  # noqa: E402
from evals.suite import Suite, usage  # noqa: E402
from evals.traffic import MIX, Outcome, Traffic, saturation  # noqa: E402

GROWTH_TARGET = 0.10
# Redis holds the answers cache: every fresh question adds an entry, kept for the
# tenant's cache_ttl_s (an hour by default), so its memory grows with the traffic by
# design; the target is for the suite's own processes.
STORES = {"redis"}


def per_minute(outcomes: list[Outcome], start: float, minutes: int) -> list[dict]:
    rows = []
    for minute in range(minutes):
        inside = [o for o in outcomes if start + 60 * minute <= o.started < start + 60 * (minute + 1)]
        latencies = [(o.ended - o.started) * 1000 for o in inside if o.ok]
        rows.append({"minute": minute + 1, "requests": len(inside),
                     "errors": sum(1 for o in inside if not o.ok),
                     "p50_ms": round(percentile(latencies, 50), 1), "p99_ms": round(percentile(latencies, 99), 1)})
    return rows


def growth(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict]:
    result = {}
    for name in sorted(before):
        if name not in after:
            result[name] = {"start": before[name], "end": None, "note": "not running at the end"}
            continue
        entry = {"start": before[name], "end": after[name]}
        for metric in ("rss_kib", "open_fds"):
            start, end = before[name][metric], after[name][metric]
            entry[f"{metric}_growth"] = round((end - start) / start, 4) if start else 0.0
        entry["met"] = name in STORES or all(entry[f"{m}_growth"] < GROWTH_TARGET for m in ("rss_kib", "open_fds"))
        result[name] = entry
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--saturation", type=float, default=0.0,
                        help="answers/s at saturation; 0 measures it first")
    parser.add_argument("--saturation-clients", type=int, default=32)
    parser.add_argument("--saturation-s", type=float, default=30.0)
    parser.add_argument("--deadline-s", type=float, default=10.0)
    parser.add_argument("--output", type=Path, default=REPO / "reports" / "soak.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        suite = Suite(Path(tmp) / "var", routers=2)
        print("starting the suite ...", file=sys.stderr)
        suite.start(report=lambda line: print(f"  {line}", file=sys.stderr))
        traffic = None
        try:
            ingest(suite)
            measured = {}
            saturated = args.saturation
            if not saturated:
                saturated, outcomes = saturation(suite.edge, suite.api_key, args.saturation_clients,
                                                 args.saturation_s, collection=COLLECTION)
                measured = {"clients": args.saturation_clients, "seconds": args.saturation_s,
                            "answers_per_s": round(saturated, 1),
                            "errors": dict(Counter(o.label for o in outcomes if not o.ok))}
                print(f"saturation: {measured}", file=sys.stderr)
            rate = saturated / 2
            traffic = Traffic(suite.edge, suite.api_key, rate, deadline_s=args.deadline_s,
                              collection=COLLECTION, max_outstanding=256).start()
            time.sleep(args.warmup_s)  # the traffic runs meanwhile: caches fill, pools grow
            start, usage_start, load_start = traffic.now(), usage(suite.processes, suite.port_names()), os.getloadavg()
            print(f"soaking at {rate:.1f}/s for {args.minutes} min ...", file=sys.stderr)
            time.sleep(60 * args.minutes)  # the measured period
            end, usage_end, load_end = traffic.now(), usage(suite.processes, suite.port_names()), os.getloadavg()
        finally:
            if traffic is not None:
                traffic.stop()
            suite.stop()
        edge_failures = suite.edge_failures()
    outcomes = [o for o in traffic.outcomes if start <= o.started < end]
    minutes = per_minute(outcomes, start, args.minutes)
    errors = [o for o in outcomes if not o.ok]
    processes = growth(usage_start, usage_end)
    first, last = minutes[0]["p99_ms"], minutes[-1]["p99_ms"]
    report = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "load_average": {"before": [round(x, 2) for x in load_before],
                                     "soak_start": [round(x, 2) for x in load_start],
                                     "soak_end": [round(x, 2) for x in load_end]}},
        "setup": {"minutes": args.minutes, "warmup_s": args.warmup_s, "rate_per_s": round(rate, 2),
                  "saturation": measured or {"given_answers_per_s": args.saturation}, "deadline_s": args.deadline_s,
                  "mix": MIX, "router_replicas": 2, "models": "CPU stand-ins",
                  "generator": {"skipped_for_outstanding_cap": traffic.skipped,
                                "max_start_lag_s": round(traffic.max_lag_s, 3)}},
        "requests": len(outcomes),
        "errors": dict(Counter(o.label for o in errors)),
        # Envoy's view of every failed call of the run (saturation included): where it failed.
        "edge_failures": edge_failures,
        "error_rate": round(len(errors) / max(len(outcomes), 1), 5),
        "degraded": sum(1 for o in outcomes if o.ok and o.degraded),
        "hung": sum(1 for o in outcomes if o.hung),
        "per_minute": minutes,
        "p99_drift": {"first_minute_ms": first, "last_minute_ms": last,
                      "ratio": round(last / first, 3) if first else None},
        "processes": processes,
        "supervisor": suite.reports,
    }
    report["targets"] = {
        "growth_below_10_percent": {name: entry.get("met", False) for name, entry in processes.items()},
        "stores_exempt": sorted(STORES),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['requests']} requests at {rate:.1f}/s, error rate {report['error_rate']:.3%}, p99 first "
          f"{first} ms, last {last} ms")
    for name, entry in processes.items():
        if entry.get("end"):
            print(f"  {name:40} rss {entry['start']['rss_kib']:>8} -> {entry['end']['rss_kib']:>8} KiB "
                  f"({entry['rss_kib_growth']:+.1%})  fds {entry['start']['open_fds']:>4} -> "
                  f"{entry['end']['open_fds']:>4} ({entry['open_fds_growth']:+.1%})")
            if not entry["met"]:
                print(f"    descriptors at the start {entry['start'].get('fds_by_kind')}, "
                      f"at the end {entry['end'].get('fds_by_kind')}")
    return 0 if all(entry.get("met", False) for entry in processes.values()) and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
