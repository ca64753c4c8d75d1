"""The secured edge in front of the real pipeline: two router replicas, generation and
Triton (CPU stand-ins), two authz and two rate-limit replicas sharing Redis."""

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from llmsuite.inference.v1 import inference_pb2, inference_pb2_grpc

from gateway.keys import add_key
from gateway.render import EdgeSecurity, EnvoyParams
from tests.gateway.procs import descriptor_set, placeholder_upstreams, start_envoy, start_gateway_service
from tests.harness import assert_grpc_error, free_port, start_service
from tests.stack_fixtures import start_generation, start_triton

pytestmark = pytest.mark.integration

LIMIT = 6
LIMITS = {"limits": [{"descriptor": "key", "requests_per_unit": LIMIT, "unit": "hour"}]}
SAMPLING = inference_pb2.SamplingParams(max_tokens=8)


@pytest.fixture(scope="module")
def edge(tmp_path_factory, redis_url):
    tmp = tmp_path_factory.mktemp("edge-router")
    keys_file = tmp / "keys.yaml"
    keys = {name: add_key(keys_file, name, "acme", ["inference"]) for name in ("grpc", "json")}
    started = []
    try:
        triton, triton_port = start_triton(tmp)
        started.append(triton)
        generation, generation_port = start_generation(tmp, triton_port)
        started.append(generation)
        routers, router_metrics = [], []
        for name in ("router-a", "router-b"):
            metrics_port = free_port()
            process, port = start_service("router", "router", {"generation_url": f"127.0.0.1:{generation_port}",
                                                               "metrics_port": metrics_port}, tmp, name=name)
            started.append(process)
            routers.append(f"127.0.0.1:{port}")
            router_metrics.append(metrics_port)
        authz, ratelimit = [], []
        for name in ("authz-a", "authz-b"):
            process, port = start_gateway_service("authz", {"keys_file": keys_file, "redis_url": redis_url}, tmp, name)
            started.append(process)
            authz.append(f"127.0.0.1:{port}")
        for name in ("rl-a", "rl-b"):
            process, port = start_gateway_service("ratelimit", {"redis_url": redis_url}, tmp, name, config=LIMITS)
            started.append(process)
            ratelimit.append(f"127.0.0.1:{port}")
        params = EnvoyParams(listen_host="127.0.0.1", listen_port=free_port(), admin_port=free_port(),
                             health_interval="0.5s", upstreams={**placeholder_upstreams(), "router": routers},
                             security=EdgeSecurity(authz=authz, ratelimit=ratelimit),
                             descriptor_set=str(descriptor_set(tmp)))
        started.append(start_envoy(params, tmp))
        yield {"address": f"127.0.0.1:{params.listen_port}", "keys": keys, "router_metrics": router_metrics}
    finally:
        for process in reversed(started):
            process.stop()


def test_the_key_limit_is_exact_over_two_router_replicas(edge):
    metadata = (("authorization", f"Bearer {edge['keys']['grpc']}"),)

    def call(_):
        with grpc.insecure_channel(edge["address"]) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            try:
                reply = stub.Generate(inference_pb2.GenerateRequest(prompt="Name a prime number.", sampling=SAMPLING),
                                      metadata=metadata, timeout=30)
                return reply.text
            except grpc.RpcError as err:
                return err

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, range(LIMIT + 4)))
    answers = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if not isinstance(r, str)]
    assert len(answers) == LIMIT and all(answers), results
    assert len(refused) == 4
    for err in refused:
        assert_grpc_error(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit exceeded")
    served = [generate_calls(port) for port in edge["router_metrics"]]
    assert all(count > 0 for count in served) and sum(served) == LIMIT, served


def generate_calls(metrics_port: int) -> float:
    """Generate calls a router replica answered OK, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("llmsuite_rpc_requests_total{") and 'method="Generate"' in line
               and 'code="OK"' in line)


def test_no_key_never_reaches_the_router(edge):
    with grpc.insecure_channel(edge["address"]) as channel:
        with pytest.raises(grpc.RpcError) as err:
            inference_pb2_grpc.InferenceServiceStub(channel).Generate(
                inference_pb2.GenerateRequest(prompt="hello"), timeout=10)
    assert_grpc_error(err.value, grpc.StatusCode.UNAUTHENTICATED, "missing API key")


def post(edge, method: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://{edge['address']}/llmsuite.inference.v1.InferenceService/{method}", data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "x-api-key": edge["keys"]["json"]}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read().decode()


def test_json_and_sse_through_the_real_router(edge):
    status, body = post(edge, "Generate", {"prompt": "Say hello.", "sampling": {"maxTokens": 8}})
    reply = json.loads(body)
    assert status == 200 and reply["text"] and reply["usage"]["outputTokens"] > 0
    status, body = post(edge, "GenerateStream", {"prompt": "Say hello.", "sampling": {"maxTokens": 8}})
    events = [json.loads(line.removeprefix("data: ")) for line in body.splitlines() if line.startswith("data: ")]
    assert status == 200 and len(events) > 1
    assert "".join(e.get("textDelta", "") for e in events[:-1]) == events[-1]["final"]["text"]
