"""The same workload through the OpenAI-compatible API and through the native JSON
route, side by side (`make bench`, reports/openai.json).

Starts everything `make run` starts (stand-in models, as evals/stack_load.py does),
then drives the mixed workload of evals/stack_load.py (popular questions that the
cache answers after their first time, fresh ones that a model answers) over HTTP/1.1
through Envoy, in turn to:

  - native: POST /llmsuite.inference.v1.InferenceService/Generate (Envoy's JSON
    transcoder -> router), body {"prompt", "sampling": {"maxTokens"}};
  - openai: POST /v1/chat/completions (Envoy -> services/openai -> router), body
    {"model": "llmsuite/auto", "messages": [...], "max_tokens"}.

Both answer the same prompts with the same settings through the same pipeline; the
difference is the translation layer. Each run uses its own tenant, so no run is
served from another's cache; runs alternate (native, openai, openai, native) so that
a drift in the machine's load does not favour one route. Reported per route: answers
per second and latency percentiles; and the p50 overhead of the OpenAI route.
Timing is for the machine it runs on (a shared 2-core VM here).

    .venv/bin/python evals/openai_load.py [--clients 16] [--seconds 30] [--warmup-seconds 5] [--rounds 2]
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from evals.stack_load import MAX_TOKENS, Workload  # noqa: E402
from evals.stats import percentile  # noqa: E402
from gateway.keys import add_key  # noqa: E402
from services.stack.stack import Ports, Stack  # noqa: E402
from services.triton.launcher import STANDIN_MODEL_REPOSITORY  # noqa: E402

NATIVE_PATH = "/llmsuite.inference.v1.InferenceService/Generate"
OPENAI_PATH = "/v1/chat/completions"
# Limits above the offered load, so the numbers measure serving, not the limiter.
BENCH_LIMITS = {"limits": [{"descriptor": d, "requests_per_unit": 1_000_000, "unit": "minute"}
                           for d in ("key", "tenant", "remote_address", "connection_address")]}


def native_body(prompt: str) -> dict:
    return {"prompt": prompt, "sampling": {"maxTokens": MAX_TOKENS}}


def openai_body(prompt: str) -> dict:
    return {"model": "llmsuite/auto", "messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS}


ROUTES = {"native": (NATIVE_PATH, native_body), "openai": (OPENAI_PATH, openai_body)}


async def client(session: aiohttp.ClientSession, url: str, body, key: str, workload: Workload, until: float,
                 record: list, recording: list[bool]) -> None:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        kind, prompt = workload.next()
        started = time.perf_counter()
        async with session.post(url, data=json.dumps(body(prompt)), headers=headers) as response:
            await response.read()
            status = response.status
        if recording[0]:
            record.append((kind, status, (time.perf_counter() - started) * 1000))


async def drive(port: int, route: str, key: str, clients: int, warmup_s: float, seconds: float) -> tuple[list, float]:
    path, body = ROUTES[route]
    record: list = []
    recording = [False]
    # The same request sequence for every run.
    workload = Workload()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        loop = asyncio.get_running_loop()
        until = loop.time() + warmup_s + seconds
        tasks = [asyncio.create_task(client(session, f"http://127.0.0.1:{port}{path}", body, key, workload, until,
                                            record, recording)) for _ in range(clients)]
        await asyncio.sleep(warmup_s)
        recording[0] = True
        started = loop.time()
        await asyncio.gather(*tasks)
        return record, loop.time() - started


def wait_known(port: int, key: str, timeout_s: float = 10.0) -> None:
    """Until authz, which polls the keys file, accepts a new key."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models", headers={"authorization": f"Bearer {key}"})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=5):
                return
        except urllib.error.HTTPError as err:
            if err.code != 401:
                raise
        time.sleep(0.05)  # poll interval
    raise TimeoutError("authz did not pick up the bench keys")


def summarise(rows: list, seconds: float) -> dict:
    ok = [row[2] for row in rows if row[1] == 200]
    return {
        "requests": len(rows),
        "ok": len(ok),
        # A guardrails block of a long benign question is a 400 on both routes.
        "errors": dict(Counter(f"HTTP {row[1]} ({row[0]})" for row in rows if row[1] != 200)),
        "per_second": round(len(ok) / seconds, 1),
        "latency_ms": {"p50": round(percentile(ok, 50), 1), "p90": round(percentile(ok, 90), 1),
                       "p99": round(percentile(ok, 99), 1), "mean": round(statistics.fmean(ok), 1) if ok else 0.0},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--warmup-seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="each round runs both routes, in alternating order")
    parser.add_argument("--output", type=Path, default=REPO / "reports" / "openai.json")
    args = parser.parse_args()
    order = [route for index in range(args.rounds)
             for route in (("native", "openai") if index % 2 == 0 else ("openai", "native"))]
    runs: dict[str, list] = {"native": [], "openai": []}
    elapsed: dict[str, float] = {"native": 0.0, "openai": 0.0}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        stack = Stack(ports=Ports.free(), var_dir=tmp / "var", model_repository=STANDIN_MODEL_REPOSITORY,
                      config={"ratelimit": BENCH_LIMITS})
        print("starting the stack ...", file=sys.stderr)
        stack.start(report=lambda line: print(f"  {line}", file=sys.stderr))
        try:
            keys_file = stack.var_dir / "gateway" / "keys.yaml"
            keys = [add_key(keys_file, f"bench-{n}", f"bench-{n}", ["inference"]) for n in range(len(order))]
            for key in keys:
                wait_known(stack.ports.envoy, key)
            load_before = os.getloadavg()
            for run, route in enumerate(order):
                print(f"{route}: {args.clients} clients, {args.warmup_seconds:g} s warm-up, {args.seconds:g} s "
                      "measured", file=sys.stderr)
                rows, seconds = asyncio.run(drive(stack.ports.envoy, route, keys[run], args.clients,
                                                  args.warmup_seconds, args.seconds))
                runs[route] += rows
                elapsed[route] += seconds
            load_after = os.getloadavg()
        finally:
            stack.stop()
    results = {route: summarise(rows, elapsed[route]) for route, rows in runs.items()}
    native, adapted = results["native"], results["openai"]
    report = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in load_after]},
        "setup": {"clients": args.clients, "warmup_s": args.warmup_seconds, "measured_s_per_run": args.seconds,
                  "runs": order, "max_tokens": MAX_TOKENS, "workload": "evals/stack_load.py (popular + fresh)",
                  "models": "CPU stand-ins (light 1 ms/token, full 4 ms/token)",
                  "native": f"POST {NATIVE_PATH}: Envoy's JSON transcoder -> router",
                  "openai": f"POST {OPENAI_PATH}: Envoy -> services/openai -> router"},
        "results": results,
        "openai_vs_native": {
            "p50_overhead_ms": round(adapted["latency_ms"]["p50"] - native["latency_ms"]["p50"], 1),
            "p99_overhead_ms": round(adapted["latency_ms"]["p99"] - native["latency_ms"]["p99"], 1),
            "throughput_ratio": round(adapted["per_second"] / native["per_second"], 3) if native["per_second"] else None,
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'route':<8} {'answers/s':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}  errors")
    for route, stats in results.items():
        latency = stats["latency_ms"]
        print(f"{route:<8} {stats['per_second']:>10} {latency['p50']:>8} {latency['p90']:>8} {latency['p99']:>8}  "
              f"{stats['errors'] or 'none'}")
    comparison = report["openai_vs_native"]
    print(f"OpenAI route: p50 overhead {comparison['p50_overhead_ms']} ms, throughput x{comparison['throughput_ratio']}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
