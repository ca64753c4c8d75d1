"""The edge's limits on slow and greedy clients, through a real Envoy: request
headers must arrive in time, idle connections are closed, new connections per
client IP are limited, and oversized headers get a clear answer (never 429).

Behind Envoy: authz, the rate-limit service (counters in process) and the echo
InferenceService (tests/gateway/upstream.py), which runs on the suite's own server
runtime and so has the services' real metadata limit.
"""

import json
import select
import socket
import subprocess
import time

import grpc
import pytest
from llmsuite.inference.v1 import inference_pb2, inference_pb2_grpc

from gateway.keys import add_key
from gateway.render import EdgeSecurity, EnvoyParams
from tests.gateway.procs import (
    descriptor_set,
    placeholder_upstreams,
    start_envoy,
    start_gateway_service,
    start_upstream,
)
from tests.harness import assert_grpc_error, free_port

HEADERS_TIMEOUT_S = 2
IDLE_TIMEOUT_S = 2
GENERATE = "/llmsuite.inference.v1.InferenceService/Generate"

# Every test goes through a real Envoy with authz, the rate limiter and the echo service.
pytestmark = pytest.mark.integration


# The tests' own readiness checks come from 127.0.0.1; the limited client uses
# another loopback address, so it has a counter of its own.
CLIENT_ADDRESS = "127.0.0.2"


def limits(connections_per_minute: int) -> dict:
    return {"limits": [{"descriptor": "connection_address", "requests_per_unit": connections_per_minute,
                        "unit": "minute", "overrides": {"127.0.0.1": 100_000}}]}


def start_edge(tmp, keys_file, connections_per_minute: int, name: str) -> tuple[list, EnvoyParams]:
    started = []
    try:
        authz, authz_port = start_gateway_service("authz", {"keys_file": keys_file}, tmp, f"authz-{name}")
        started.append(authz)
        ratelimit, ratelimit_port = start_gateway_service("ratelimit", {}, tmp, f"rl-{name}",
                                                          config=limits(connections_per_minute))
        started.append(ratelimit)
        upstream, upstream_port = start_upstream(tmp, f"up-{name}")
        started.append(upstream)
        params = EnvoyParams(
            listen_host="127.0.0.1", listen_port=free_port(), admin_port=free_port(), health_interval="0.5s",
            upstreams={**placeholder_upstreams(), "router": [f"127.0.0.1:{upstream_port}"]},
            security=EdgeSecurity(authz=[f"127.0.0.1:{authz_port}"], ratelimit=[f"127.0.0.1:{ratelimit_port}"]),
            descriptor_set=str(descriptor_set(tmp)),
            request_headers_timeout=f"{HEADERS_TIMEOUT_S}s", idle_timeout=f"{IDLE_TIMEOUT_S}s")
        started.append(start_envoy(params, tmp, name=f"envoy-{name}"))
    except BaseException:
        for process in reversed(started):
            process.stop()
        raise
    return started, params


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("edge-limits-keys")
    keys_file = tmp / "keys.yaml"
    return keys_file, add_key(keys_file, "caller", "acme", ["inference"])


@pytest.fixture(scope="module")
def edge(tmp_path_factory, keys):
    started, params = start_edge(tmp_path_factory.mktemp("edge-limits"), keys[0], 100_000, "open")
    yield {"port": params.listen_port, "key": keys[1]}
    for process in reversed(started):
        process.stop()


def closed_within(sock: socket.socket, seconds: float, drip: bytes = b"") -> tuple[bool, bytes]:
    """Waits for the peer to close `sock` (sending `drip` now and then, as a slow
    client does); returns (closed, what was received)."""
    received = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], 0.25)
        if readable:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                return True, received
            if not chunk:
                return True, received
            received += chunk
        elif drip:
            try:
                sock.sendall(drip)
            except (BrokenPipeError, ConnectionResetError):
                return True, received
    return False, received


def test_slow_headers_are_cut_off_at_the_request_header_timeout(edge):
    """Slowloris: many connections that send a header now and then but never finish."""
    sockets = []
    try:
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", edge["port"]), timeout=5)
            sock.sendall(f"POST {GENERATE} HTTP/1.1\r\nhost: edge\r\n".encode())
            sockets.append(sock)
        start = time.monotonic()
        results = [closed_within(sock, HEADERS_TIMEOUT_S * 5, drip=b"x-slow: 1\r\n") for sock in sockets]
        elapsed = time.monotonic() - start
    finally:
        for sock in sockets:
            sock.close()
    assert all(closed for closed, _ in results), "Envoy kept connections with unfinished headers open"
    assert all(received.startswith(b"HTTP/1.1 408") for _, received in results), results[0][1]
    assert elapsed < HEADERS_TIMEOUT_S * 5


def test_idle_connections_are_closed(edge):
    with socket.create_connection(("127.0.0.1", edge["port"]), timeout=5) as sock:
        sock.sendall(f"POST {GENERATE} HTTP/1.1\r\nhost: edge\r\ncontent-type: application/json\r\n"
                     "content-length: 2\r\n\r\n{}".encode())
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
        closed, _ = closed_within(sock, IDLE_TIMEOUT_S * 5)
    assert closed, "an idle keep-alive connection stayed open past the idle timeout"


def curl_status(port: int, header_bytes: int, *options: str) -> int:
    # No body: Envoy answers as soon as the headers are in, and a client still
    # uploading would see that stream reset instead of the answer.
    result = subprocess.run(["curl", "-sS", *options, "-o", "/dev/null", "-w", "%{http_code}",
                             f"http://127.0.0.1:{port}{GENERATE}", "-H", "content-type: application/json",
                             "-H", "x-padding: " + "p" * header_bytes],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def grpc_generate(port: int, key: str, header_bytes: int) -> dict:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = inference_pb2_grpc.InferenceServiceStub(channel).Generate(
            inference_pb2.GenerateRequest(prompt="padded"),
            metadata=(("authorization", f"Bearer {key}"), ("x-padding", "p" * header_bytes)), timeout=10)
    return json.loads(reply.text)


def test_oversized_headers_get_431_or_invalid_argument_never_429(edge):
    for options in ((), ("--http2-prior-knowledge",)):
        assert curl_status(edge["port"], 60_000, *options) == 431, options
    with pytest.raises(grpc.RpcError) as err:
        grpc_generate(edge["port"], edge["key"], 60_000)
    assert_grpc_error(err.value, grpc.StatusCode.INVALID_ARGUMENT, "request headers too large")


def test_headers_the_edge_accepts_are_accepted_by_the_services(edge):
    """20 KB of headers is within the edge's limit, and above gRPC's default (16 KiB),
    which made services answer RESOURCE_EXHAUSTED (429) for what Envoy had let through."""
    assert grpc_generate(edge["port"], edge["key"], 20_000)["prompt"] == "padded"


def test_new_connections_per_client_ip_are_limited(tmp_path, keys):
    allowed = 3
    started, params = start_edge(tmp_path, keys[0], allowed, "tight")
    try:
        outcomes = []
        for _ in range(allowed + 3):
            result = subprocess.run(["curl", "-sS", "--interface", CLIENT_ADDRESS, "-o", "/dev/null",
                                     "-w", "%{http_code}", f"http://127.0.0.1:{params.listen_port}{GENERATE}",
                                     "-H", "content-type: application/json", "-d", "{}"],
                                    capture_output=True, text=True, timeout=30)
            outcomes.append(result.stdout if result.returncode == 0 else "closed")
    finally:
        for process in reversed(started):
            process.stop()
    assert outcomes == ["401"] * allowed + ["closed"] * 3, outcomes
