"""What tracing costs a request, off (the default) and on (reports/tracing_cost.json).

Two measurements, each first with tracing off, then on (exporting by OTLP/gRPC to a
local receiver, tests/otlp_receiver.py, as to a collector):

  - spans: the stage spans one request through the router and generation opens (admit,
    input check, cache, documents, generation, output check, chat) with their
    attributes, against the same loop without them;
  - one gRPC hop: sequential unary calls over loopback between a grpc.aio server with
    the suite's interceptors and a client on the suite's upstream channel, as every hop
    of a request is; on, each call is a client span and a server span of a sampled trace.

Off, the gRPC path is the one without tracing (no interceptor exists), so what a request
pays is the spans' line. Timing is for the machine it runs on (a shared 2-core VM here);
the load average is recorded beside it.

    .venv/bin/python evals/tracing_cost.py [--requests 20000] [--calls 2000]
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from opentelemetry import trace  # noqa: E402

from services.common import channels, tracing  # noqa: E402
from services.common.interceptor import ServerInterceptor  # noqa: E402
from tests.otlp_receiver import OtlpReceiver  # noqa: E402

REPORT = REPO / "reports" / "tracing_cost.json"
STAGES = ["admit", "input check", "cache", "documents", "generation", "output check", "chat light"]
# A sampled trace context, as Envoy sends it for a traced request.
TRACEPARENT = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
METHOD = "/llmsuite.bench.v1.Echo/Echo"


def _stage_attributes(name: str) -> dict:
    return {**tracing.chat("light", 64), "llmsuite.stage": name}


# Spans a round may queue: below the batch processor's queue (2048), so none is dropped
# and the export of each is counted.
ROUND = 250


def _flush() -> None:
    if tracing.enabled():
        trace.get_tracer_provider().force_flush()


def _stage_spans(requests: int) -> tuple[float, float]:
    """(wall ns on the request's thread, CPU ns of the whole process, the export included) per request."""
    wall = cpu = 0
    with tracing.incoming("request", TRACEPARENT):
        for _ in range(0, requests, ROUND):
            cpu_started, started = time.process_time_ns(), time.perf_counter_ns()
            for _ in range(ROUND):
                for name in STAGES:
                    with tracing.span(name, _stage_attributes(name)) as span:
                        span.set_attribute("llmsuite.cache.hit", False)
            wall += time.perf_counter_ns() - started
            _flush()
            cpu += time.process_time_ns() - cpu_started
    rounds = -(-requests // ROUND) * ROUND
    return wall / rounds, cpu / rounds


def _without_spans(requests: int) -> tuple[float, float]:
    """The same loop, attributes built, no span: the baseline."""
    cpu_started, started = time.process_time_ns(), time.perf_counter_ns()
    for _ in range(requests):
        for name in STAGES:
            _stage_attributes(name)
    return (time.perf_counter_ns() - started) / requests, (time.process_time_ns() - cpu_started) / requests


async def _echo(request: bytes, context) -> bytes:
    return request


async def _hop_latencies(calls: int) -> list[float]:
    """Microseconds of each of `calls` sequential unary calls through the suite's interceptors."""
    server = grpc.aio.server(interceptors=[*tracing.server_interceptors(), ServerInterceptor("bench", "default")])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "llmsuite.bench.v1.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = channels.upstream_channel(f"127.0.0.1:{port}")
    echo = channel.unary_unary(METHOD)
    latencies = []
    try:
        with tracing.incoming("request", TRACEPARENT):
            for index in range(calls + calls // 10):
                started = time.perf_counter()
                await echo(b"x" * 64, timeout=5)
                if index >= calls // 10:  # the first tenth warms up
                    latencies.append((time.perf_counter() - started) * 1e6)
    finally:
        await channel.close()
        await server.stop(0)
    return latencies


def _measure(requests: int, calls: int) -> dict:
    (wall_ns, cpu_ns), (baseline_wall_ns, baseline_cpu_ns) = _stage_spans(requests), _without_spans(requests)
    latencies = asyncio.run(_hop_latencies(calls))
    _flush()
    return {
        "stage_spans_ns_per_request": round(wall_ns - baseline_wall_ns, 1),
        "stage_spans_cpu_ns_per_request_with_export": round(cpu_ns - baseline_cpu_ns, 1),
        "grpc_hop_us": {"median": round(statistics.median(latencies), 1),
                        "mean": round(statistics.fmean(latencies), 1),
                        "p90": round(statistics.quantiles(latencies, n=10)[-1], 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4_000)
    parser.add_argument("--calls", type=int, default=2_000)
    args = parser.parse_args()
    load_before = os.getloadavg()
    off = _measure(args.requests, args.calls)
    with OtlpReceiver() as receiver:
        tracing.configure("bench", tracing.TracingSettings(otlp_endpoint=receiver.grpc_endpoint))
        on = _measure(args.requests, args.calls)
        tracing.shutdown()
        exported = len(receiver.spans())
    # Each of `calls` (and its warm-up tenth) is a client and a server span, each request a round's share.
    expected = 2 * (args.calls + args.calls // 10) + len(STAGES) * -(-args.requests // ROUND) * ROUND
    hops = 6  # a RAG request's gRPC calls below the edge: CheckInput, Embed, Search, GenerateStream,
    #           CheckOutputStream, and Envoy's call to the router
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores ({platform.node()}), shared",
        "python": platform.python_version(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "requests": args.requests,
        "calls": args.calls,
        "stages_per_request": len(STAGES),
        "off": off,
        "on": on,
        "spans_exported_on": exported,
        "spans_made_on": expected,
        # Off: the stage spans only (no interceptor exists). On: the stage spans' CPU with their
        # export, and each hop's added median latency.
        "per_request_us": {
            "off": round(off["stage_spans_ns_per_request"] / 1000, 2),
            "on_estimate": round(on["stage_spans_cpu_ns_per_request_with_export"] / 1000
                                 + hops * (on["grpc_hop_us"]["median"] - off["grpc_hop_us"]["median"]), 1),
        },
        "hops_per_request": hops,
    }
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
