"""Edge overhead: the same unary gRPC call through an open Envoy and through Envoy
with authz, the global rate limiter (Redis) and the rest of the edge filters; and
the same request as HTTP/JSON through Envoy's JSON transcoder and through the
OpenAI-compatible API (Envoy -> services/openai -> gRPC), both on the open edge,
which is the cost of each translation.

    .venv/bin/python -m tests.gateway.bench_edge [--requests 3000] [--clients 8]

Uses h2load (Debian's nghttp2-client) with a pre-encoded body, so the client
costs little; the upstream is the echo InferenceService (tests/gateway/upstream.py).
Numbers are for the machine it runs on; on a shared 2-core box they are noisy.
"""

import argparse
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from llmsuite.inference.v1 import inference_pb2

from gateway.keys import add_key
from gateway.render import EdgeSecurity, EnvoyParams, LocalRateLimit
from tests.gateway.procs import (
    descriptor_set,
    placeholder_upstreams,
    start_envoy,
    start_gateway_service,
    start_upstream,
)
from tests.harness import REPO, ServiceProcess, free_port, service_env, start_redis

PATH = "/llmsuite.inference.v1.InferenceService/Generate"
OPENAI_PATH = "/v1/chat/completions"
GRPC_HEADERS = ["content-type: application/grpc", "te: trailers"]
JSON_HEADERS = ["content-type: application/json"]


# The edge's cost is measured, not its safety valve: Envoy's per-instance token bucket
# (1,000 a second by default) would refuse part of a run that goes faster (429s).
UNLIMITED = LocalRateLimit(tokens_per_fill=10**6, burst=10**6)


def h2load(port: int, body: Path, requests: int, clients: int, headers: list[str], path: str = PATH) -> dict[str, str]:
    argv = ["h2load", "-n", str(requests), "-c", str(clients), "-m", "1", "-d", str(body)]
    for header in headers:
        argv += ["-H", header]
    out = subprocess.run([*argv, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True,
                         timeout=600).stdout
    stats = {"rps": re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1),
             "ok": re.search(r"status codes: (\d+) 2xx", out).group(1)}
    stats["mean"], stats["sd"] = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)\s+(\S+)", out).groups()
    return stats


def translations(tmp: Path, up_port: int, requests: int, clients: int, started: list) -> dict[str, dict]:
    """One question as HTTP/JSON through the transcoder, and as an OpenAI chat
    completion through services/openai, on an open edge in front of the echo upstream."""
    openai_port = free_port()
    adapter = ServiceProcess("openai-bench", [sys.executable, "-m", "services.openai"], tmp, env=service_env(
        "openai", {"port": openai_port, "metrics_port": free_port(), "router_url": f"127.0.0.1:{up_port}"}))
    started.append(adapter.start())
    adapter.wait_http_ok(f"http://127.0.0.1:{openai_port}/healthz", timeout=60)
    params = EnvoyParams(listen_host="127.0.0.1", listen_port=free_port(), admin_port=free_port(),
                         local_rate_limit=UNLIMITED,
                         upstreams={**placeholder_upstreams(), "router": [f"127.0.0.1:{up_port}"],
                                    "openai": [f"127.0.0.1:{openai_port}"]},
                         descriptor_set=str(descriptor_set(tmp)))
    envoy = start_envoy(params, tmp, name="envoy-json")
    started.append(envoy)
    native, chat = tmp / "native.json", tmp / "chat.json"
    native.write_text(json.dumps({"prompt": "benchmark the edge"}))
    chat.write_text(json.dumps({"model": "llmsuite/auto", "messages": [{"role": "user", "content": "benchmark the edge"}]}))
    results = {}
    for name, body, path in (("json transcoder", native, PATH), ("openai api", chat, OPENAI_PATH)):
        h2load(params.listen_port, body, 200, clients, JSON_HEADERS, path)  # warm-up
        results[name] = h2load(params.listen_port, body, requests, clients, JSON_HEADERS, path)
    envoy.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        message = inference_pb2.GenerateRequest(prompt="benchmark the edge").SerializeToString()
        body = tmp / "request.bin"
        body.write_bytes(b"\x00" + struct.pack(">I", len(message)) + message)
        key = add_key(tmp / "keys.yaml", "bench", "bench", ["inference"])
        started = []
        try:
            redis_process, redis_url = start_redis(tmp)
            started.append(redis_process)
            upstream, up_port = start_upstream(tmp, "up-bench")
            authz, authz_port = start_gateway_service("authz", {"keys_file": tmp / "keys.yaml", "redis_url": redis_url},
                                                      tmp, "authz")
            limits = {"limits": [{"descriptor": d, "requests_per_unit": 10**9, "unit": "minute"}
                                 for d in ("key", "tenant", "remote_address")]}
            limiter, rl_port = start_gateway_service("ratelimit", {"redis_url": redis_url}, tmp, "ratelimit",
                                                     config=limits)
            started += [upstream, authz, limiter]
            results = {}
            for name, security in (("open edge", None),
                                   ("authz + ratelimit", EdgeSecurity(authz=[f"127.0.0.1:{authz_port}"],
                                                                      ratelimit=[f"127.0.0.1:{rl_port}"]))):
                params = EnvoyParams(listen_host="127.0.0.1", listen_port=free_port(), admin_port=free_port(),
                                     local_rate_limit=UNLIMITED,
                                     upstreams={**placeholder_upstreams(), "router": [f"127.0.0.1:{up_port}"]},
                                     security=security)
                envoy = start_envoy(params, tmp, name=f"envoy-{len(results)}")
                started.append(envoy)
                headers = [*GRPC_HEADERS, *([f"x-api-key: {key}"] if security else [])]
                h2load(params.listen_port, body, 200, args.clients, headers)  # warm-up
                results[name] = h2load(params.listen_port, body, args.requests, args.clients, headers)
                envoy.stop()
            results.update(translations(tmp, up_port, args.requests, args.clients, started))
        finally:
            for process in reversed(started):
                process.stop()
    print(f"{args.requests} unary calls, {args.clients} clients, one stream each")
    print(f"{'edge':<20} {'req/s':>8} {'mean':>10} {'sd':>10} {'2xx':>6}")
    for name, stats in results.items():
        print(f"{name:<20} {stats['rps']:>8} {stats['mean']:>10} {stats['sd']:>10} {stats['ok']:>6}")
    report = {"machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
              "requests": args.requests, "clients": args.clients,
              "upstream": "echo InferenceService (tests/gateway/upstream.py): the edge's own cost",
              "json": "'json transcoder' and 'openai api' send the same question as HTTP/JSON on the open edge",
              "results": results}
    out = REPO / "reports" / "edge.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
