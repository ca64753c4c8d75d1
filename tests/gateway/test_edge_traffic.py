"""Traffic policy through the real Envoy (open edge, no authz): a replica killed under
load, the local rate-limit safety valve, the request size limit."""

import json
import signal
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from llmsuite.inference.v1 import inference_pb2, inference_pb2_grpc

from gateway.render import EnvoyParams, LocalRateLimit
from tests.gateway.procs import placeholder_upstreams, start_envoy, start_upstream
from tests.harness import free_port

pytestmark = pytest.mark.integration

WORKERS = 6


def open_edge(upstreams: list[str], **overrides) -> EnvoyParams:
    return EnvoyParams(listen_host="127.0.0.1", listen_port=free_port(), admin_port=free_port(),
                       health_interval="0.5s", upstreams={**placeholder_upstreams(), "router": upstreams},
                       **overrides)


def test_a_replica_killed_under_load_moves_traffic_to_the_other(tmp_path):
    replicas = [start_upstream(tmp_path, name) for name in ("up-a", "up-b")]
    envoy = None
    try:
        params = open_edge([f"127.0.0.1:{port}" for _, port in replicas])
        envoy = start_envoy(params, tmp_path)
        killed = threading.Event()
        results: list[tuple[bool, str, str]] = []  # (started after the kill, outcome, replica)
        lock = threading.Lock()

        def worker(index: int) -> None:
            with grpc.insecure_channel(f"127.0.0.1:{params.listen_port}") as channel:
                stub = inference_pb2_grpc.InferenceServiceStub(channel)
                after = 0
                while after < 15:
                    started_after = killed.is_set()
                    try:
                        # Streams of ten paced deltas keep calls in flight on both replicas.
                        *_, last = stub.GenerateStream(inference_pb2.GenerateStreamRequest(
                            prompt=" ".join(["word"] * 10)), timeout=10)
                        outcome, replica = "ok", json.loads(last.final.text)["replica"]
                    except grpc.RpcError as err:
                        outcome, replica = err.code().name, err.details()
                    with lock:
                        results.append((started_after, outcome, replica))
                        if len(results) == 40 and not killed.is_set():
                            replicas[0][0].signal(signal.SIGKILL)
                            killed.set()
                    after += started_after

        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(worker, range(WORKERS)))

        before = [r for r in results if not r[0]]
        after = [r for r in results if r[0]]
        assert {replica for _, outcome, replica in before if outcome == "ok"} == {"up-a", "up-b"}
        # Once the replica is gone the other answers: every worker's last calls all succeed.
        assert all(outcome == "ok" and replica == "up-b" for _, outcome, replica in after[-3 * WORKERS:]), after
        # The only failures are calls that were on the killed replica's connection when
        # it died (Envoy's UC flag, no retry possible); a call that found the replica
        # gone was retried on the other one. Envoy's access log says which is which.
        errors = [r for r in results if r[1] != "ok"]
        killed_address = f"127.0.0.1:{replicas[0][1]}"
        path = "/llmsuite.inference.v1.InferenceService/GenerateStream"

        def failed_in_log() -> list[dict] | None:
            entries = [json.loads(line) for line in envoy.log_path.read_text().splitlines() if line.startswith("{")]
            entries = [e for e in entries if e["method"] == path]
            return [e for e in entries if e["grpc_status"] != 0] if len(entries) == len(results) else None

        envoy.wait_until(lambda: failed_in_log() is not None, "an access log line per call", timeout=10)
        failed = failed_in_log()
        assert len(failed) == len(errors)
        assert all("UC" in e["flags"] and e["upstream"] == killed_address and e["attempts"] == 1
                   for e in failed), failed
    finally:
        if envoy:
            envoy.stop()
        for process, _ in replicas:
            process.stop()


BURST = 6


def local_limit_passed(admin_port: int) -> int:
    """Requests Envoy's local rate limit has let through so far (its `ok` counter)."""
    url = f"http://127.0.0.1:{admin_port}/stats?filter=edge_local_ratelimit"
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            name, _, value = line.partition(": ")
            if name == "edge_local_ratelimit.http_local_rate_limit.ok":
                return int(value)
    return 0


@pytest.fixture(scope="module")
def small_edge(tmp_path_factory):
    """An edge with a tiny local bucket (BURST requests, no refill) and a 64 KiB body limit."""
    tmp = tmp_path_factory.mktemp("valve")
    process, port = start_upstream(tmp, "up-valve")
    envoy = None
    try:
        params = open_edge([f"127.0.0.1:{port}"], max_request_bytes=64 * 1024,
                           local_rate_limit=LocalRateLimit(tokens_per_fill=1, fill_interval="3600s", burst=BURST))
        envoy = start_envoy(params, tmp)
        with grpc.insecure_channel(f"127.0.0.1:{params.listen_port}") as channel:
            yield inference_pb2_grpc.InferenceServiceStub(channel), params.admin_port
    finally:
        if envoy:
            envoy.stop()
        process.stop()


def test_request_size_limit_and_local_safety_valve(small_edge):
    stub, admin_port = small_edge
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(inference_pb2.GenerateRequest(prompt="x" * 100_000), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNKNOWN and err.value.details() == "Payload Too Large"
    # Envoy's readiness polls spent tokens too; the admin counters say how many.
    left = BURST - local_limit_passed(admin_port)
    assert left > 0
    for _ in range(left):
        assert stub.Generate(inference_pb2.GenerateRequest(prompt="fits"), timeout=10).model == "up-valve"
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(inference_pb2.GenerateRequest(prompt="one too many"), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    headers = dict(err.value.initial_metadata() or ()) | dict(err.value.trailing_metadata() or ())
    assert headers.get("x-local-rate-limit") == "true"
