"""Through the real Envoy with edge security: API keys, scopes, JWT, spoofed identity
headers, revocation, exact rate limits across replicas, and HTTP/JSON with SSE.

Behind Envoy: two authz and two rate-limit replicas sharing Redis, and two replicas
of an InferenceService that reports the identity it received (tests/gateway/upstream.py).
"""

import base64
import json
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import redis
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from llmsuite.inference.v1 import inference_pb2, inference_pb2_grpc

from gateway.keys import add_key
from gateway.render import EdgeSecurity, EnvoyParams, Jwt
from services.stack.processes import VENV_BIN
from tests.gateway.procs import (
    descriptor_set,
    placeholder_upstreams,
    start_envoy,
    start_gateway_service,
    start_upstream,
)
from tests.harness import assert_grpc_error, free_port

pytestmark = pytest.mark.integration

RATE_LIMIT = 20
LIMITS = {"limits": [
    {"descriptor": "key", "requests_per_unit": 1000, "unit": "minute", "overrides": {"limited": RATE_LIMIT}},
    {"descriptor": "tenant", "requests_per_unit": 100000, "unit": "minute"},
    {"descriptor": "remote_address", "requests_per_unit": 100000, "unit": "minute"},
]}
# Keys per test, so that no test's revocation or counters touch another's.
KEYS = {
    "caller": ("acme", ["inference"]),
    "reader": ("acme", ["retrieval:read"]),
    "limited": ("acme", ["inference"]),
    "revokee": ("acme", ["inference"]),
    "json": ("initech", ["inference"]),
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    """An RSA key pair: the JWKS Envoy trusts and RS256 tokens signed with it."""

    def __init__(self):
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> str:
        numbers = self._key.public_key().public_numbers()

        def encode(value: int) -> str:
            return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))

        return json.dumps({"keys": [{"kty": "RSA", "kid": "test", "alg": "RS256", "use": "sig",
                                     "n": encode(numbers.n), "e": encode(numbers.e)}]})

    def token(self, **claims) -> str:
        header = b64url(json.dumps({"alg": "RS256", "kid": "test", "typ": "JWT"}).encode())
        body = b64url(json.dumps({"iss": "llmsuite", "aud": "llmsuite-edge", "exp": int(time.time()) + 600,
                                  **claims}).encode())
        signature = self._key.sign(f"{header}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{header}.{body}.{b64url(signature)}"


@pytest.fixture(scope="module")
def edge(tmp_path_factory, redis_url):
    tmp = tmp_path_factory.mktemp("edge")
    keys_file = tmp / "keys.yaml"
    keys = {name: add_key(keys_file, name, tenant, scopes) for name, (tenant, scopes) in KEYS.items()}
    signer = Signer()
    jwks = tmp / "jwks.json"
    jwks.write_text(signer.jwks())
    started = []
    try:
        authz, ratelimit, upstreams, rl_metrics, authz_logs = [], [], [], [], []
        for name in ("authz-a", "authz-b"):
            process, port = start_gateway_service("authz", {"keys_file": keys_file, "redis_url": redis_url}, tmp, name)
            started.append(process)
            authz.append(f"127.0.0.1:{port}")
            authz_logs.append(process.log_path)
        for name in ("rl-a", "rl-b"):
            metrics_port = free_port()
            process, port = start_gateway_service("ratelimit", {"redis_url": redis_url, "metrics_port": metrics_port},
                                                  tmp, name, config=LIMITS)
            started.append(process)
            ratelimit.append(f"127.0.0.1:{port}")
            rl_metrics.append(metrics_port)
        for name in ("up-a", "up-b"):
            process, port = start_upstream(tmp, name)
            started.append(process)
            upstreams.append(f"127.0.0.1:{port}")
        params = EnvoyParams(
            listen_host="127.0.0.1", listen_port=free_port(), admin_port=free_port(), health_interval="0.5s",
            upstreams={**placeholder_upstreams(), "router": upstreams},
            security=EdgeSecurity(authz=authz, ratelimit=ratelimit, jwt=Jwt(jwks_path=str(jwks))),
            descriptor_set=str(descriptor_set(tmp)))
        envoy = start_envoy(params, tmp)
        started.append(envoy)
        yield {"address": f"127.0.0.1:{params.listen_port}", "keys": keys, "signer": signer, "envoy": envoy,
               "rl_metrics": rl_metrics, "authz_logs": authz_logs}
    finally:
        for process in reversed(started):
            process.stop()


@pytest.fixture(scope="module")
def channel(edge):
    with grpc.insecure_channel(edge["address"]) as channel:
        yield channel


def generate(channel, metadata=(), prompt="hello edge"):
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    reply, call = stub.Generate.with_call(inference_pb2.GenerateRequest(prompt=prompt), metadata=metadata, timeout=10)
    return json.loads(reply.text), call


def auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def failure(channel, metadata) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        generate(channel, metadata)
    return err.value


def test_a_valid_key_reaches_the_service_with_its_identity(edge, channel):
    seen, _ = generate(channel, auth(edge["keys"]["caller"]))
    assert (seen["tenant"], seen["key_id"], seen["scopes"]) == ("acme", "caller", "inference")


def test_x_api_key_header_is_accepted(edge, channel):
    seen, _ = generate(channel, (("x-api-key", edge["keys"]["caller"]),))
    assert seen["key_id"] == "caller"


def test_no_key_is_unauthenticated(channel):
    assert_grpc_error(failure(channel, ()), grpc.StatusCode.UNAUTHENTICATED, "missing API key")


def test_a_bad_key_is_unauthenticated(edge, channel):
    forged = edge["keys"]["caller"][:-4] + "AAAA"
    assert_grpc_error(failure(channel, auth(forged)), grpc.StatusCode.UNAUTHENTICATED, "API key is not valid")
    assert_grpc_error(failure(channel, auth("sk-123")), grpc.StatusCode.UNAUTHENTICATED, "malformed")


def test_wrong_scope_is_permission_denied(edge, channel):
    assert_grpc_error(failure(channel, auth(edge["keys"]["reader"])), grpc.StatusCode.PERMISSION_DENIED,
                      "lacks scope 'inference'")


def test_spoofed_identity_headers_are_replaced(edge, channel):
    spoofed = (*auth(edge["keys"]["caller"]), ("x-llmsuite-tenant", "victim"),
               ("x-llmsuite-key-id", "admin"), ("x-llmsuite-scopes", "admin"))
    seen, _ = generate(channel, spoofed)
    assert (seen["tenant"], seen["key_id"], seen["scopes"]) == ("acme", "caller", "inference")


def test_health_and_reflection_are_public(edge, channel):
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    listing = subprocess.run([str(VENV_BIN / "grpcurl"), "-plaintext", edge["address"], "list"],
                             capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    assert "llmsuite.inference.v1.InferenceService" in listing.stdout.split()


def test_a_revoked_key_is_refused_through_envoy(edge, channel, redis_url):
    key = edge["keys"]["revokee"]
    assert generate(channel, auth(key))[0]["key_id"] == "revokee"
    redis.Redis.from_url(redis_url).sadd("llmsuite:revoked-keys", "revokee")
    deadline = time.monotonic() + 5
    while True:
        try:
            generate(channel, auth(key))
        except grpc.RpcError as err:
            assert_grpc_error(err, grpc.StatusCode.UNAUTHENTICATED, "revoked")
            break
        assert time.monotonic() < deadline, "the revoked key still works through Envoy"


class TestJwt:
    def test_a_signed_token_gives_its_claims(self, edge, channel):
        token = edge["signer"].token(sub="billing", tenant="globex", scope="inference")
        seen, _ = generate(channel, auth(token))
        assert (seen["tenant"], seen["key_id"]) == ("globex", "jwt:billing")

    def test_a_token_signed_by_someone_else_is_refused(self, channel):
        token = Signer().token(sub="mallory", tenant="globex", scope="inference")
        assert failure(channel, auth(token)).code() == grpc.StatusCode.UNAUTHENTICATED

    def test_token_scopes_apply(self, edge, channel):
        token = edge["signer"].token(sub="billing", tenant="globex", scope="retrieval:read")
        assert_grpc_error(failure(channel, auth(token)), grpc.StatusCode.PERMISSION_DENIED, "JWT subject 'billing'")


def counted_decisions(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("llmsuite_ratelimit_decisions_total{"))


def test_a_key_limit_is_exact_across_two_limiters_and_two_upstreams(edge, channel):
    key = edge["keys"]["limited"]

    def call(_):
        try:
            seen, _ = generate(channel, auth(key))
            return "ok", seen["replica"], {}
        except grpc.RpcError as err:
            return err.code(), err, dict(err.trailing_metadata() or ()) | dict(err.initial_metadata() or ())

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(RATE_LIMIT + 12)))
    ok = [r for r in results if r[0] == "ok"]
    limited = [r for r in results if r[0] == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert len(ok) == RATE_LIMIT and len(limited) == 12, results
    assert {replica for _, replica, _ in ok} == {"up-a", "up-b"}, "both upstream replicas served"
    assert all(counted_decisions(port) > 0 for port in edge["rl_metrics"]), "both limiters were asked"
    _, err, headers = limited[0]
    assert f"{RATE_LIMIT} requests per minute for key 'limited'" in err.details()
    assert headers.get("x-ratelimit-limit", "").startswith(str(RATE_LIMIT))
    assert headers.get("x-ratelimit-remaining") == "0" and int(headers["retry-after"]) >= 1
    # gRPC callers read when to retry from RetryInfo, and which quota from QuotaFailure.
    status = rpc_status.from_call(err)
    details = {}
    for any_detail in status.details:
        for kind in (error_details_pb2.RetryInfo, error_details_pb2.QuotaFailure, error_details_pb2.ErrorInfo):
            if any_detail.Is(kind.DESCRIPTOR):
                details[kind.__name__] = kind()
                any_detail.Unpack(details[kind.__name__])
    assert details["RetryInfo"].retry_delay.seconds == int(headers["retry-after"])
    assert details["QuotaFailure"].violations[0].subject == "key:limited"
    assert details["ErrorInfo"].reason == "RATE_LIMITED"
    # Another key of the same tenant is not affected.
    assert generate(channel, auth(edge["keys"]["caller"]))[0]["key_id"] == "caller"


def post_json(edge, method: str, body: dict, key: str | None):
    headers = {"content-type": "application/json"}
    if key:
        headers["x-api-key"] = key
    request = urllib.request.Request(f"http://{edge['address']}/llmsuite.inference.v1.InferenceService/{method}",
                                     data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read().decode()


def test_json_generate(edge):
    status, _, body = post_json(edge, "Generate", {"prompt": "json please"}, edge["keys"]["json"])
    assert status == 200
    reply = json.loads(body)
    assert json.loads(reply["text"])["tenant"] == "initech"
    assert reply["usage"] == {"inputTokens": 2, "outputTokens": 2, "totalTokens": 4}


def test_json_stream_is_server_sent_events(edge):
    status, _, body = post_json(edge, "GenerateStream", {"prompt": "one two three"}, edge["keys"]["json"])
    assert status == 200
    events = [json.loads(line.removeprefix("data: ")) for line in body.splitlines() if line.startswith("data: ")]
    assert [e["textDelta"] for e in events[:-1]] == ["one ", "two ", "three "]
    assert json.loads(events[-1]["final"]["text"])["prompt"] == "one two three"


def test_json_without_a_key_is_401_with_a_message(edge):
    status, headers, body = post_json(edge, "Generate", {"prompt": "x"}, None)
    assert status == 401 and "missing API key" in body
    assert headers.get("www-authenticate", "").startswith("Bearer")


def test_access_log_records_request_id_tenant_and_status(edge, channel):
    _, call = generate(channel, auth(edge["keys"]["caller"]), prompt="access log probe")
    request_id = dict(call.initial_metadata())["x-request-id"]

    def logged():
        for line in edge["envoy"].log_path.read_text().splitlines():
            if request_id in line and line.startswith("{"):
                return json.loads(line)
        return None

    edge["envoy"].wait_until(lambda: logged() is not None, "access log line", timeout=10)
    entry = logged()
    assert entry["tenant"] == "acme" and entry["key_id"] == "caller" and entry["grpc_status"] == 0


def curl(edge, method: str, body: dict, key: str) -> tuple[int, str]:
    """POSTs JSON with curl, as a user of the HTTP API would; returns (status, body)."""
    result = subprocess.run(
        ["curl", "-sS", "-N", "-o", "-", "-w", "\n%{http_code}",
         f"http://{edge['address']}/llmsuite.inference.v1.InferenceService/{method}",
         "-H", f"x-api-key: {key}", "-H", "content-type: application/json", "-d", json.dumps(body)],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    text, _, status = result.stdout.rpartition("\n")
    return int(status), text


def sse_events(body: str) -> list[dict]:
    return [json.loads(line.removeprefix("data: ")) for line in body.splitlines() if line.startswith("data: ")]


def details_by_type(status: dict) -> dict[str, dict]:
    return {detail["@type"].rsplit(".", 1)[-1]: detail for detail in status["details"]}


def test_json_errors_carry_code_message_and_details(edge):
    status, body = curl(edge, "Generate", {"prompt": "fail:INVALID_ARGUMENT"}, edge["keys"]["json"])
    assert status == 400, body
    error = json.loads(body)
    assert error["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert error["message"] == "the test upstream refuses this prompt"
    details = details_by_type(error)
    assert details["ErrorInfo"]["reason"] == "TEST_REFUSED"
    assert details["BadRequest"]["fieldViolations"][0]["field"] == "prompt"


def test_a_stream_failing_before_its_first_message_is_an_http_error(edge):
    status, body = curl(edge, "GenerateStream", {"prompt": "fail:UNAVAILABLE"}, edge["keys"]["json"])
    assert status == 503, body
    error = json.loads(body)
    assert error["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert details_by_type(error)["RetryInfo"]["retryDelay"] == "2s"


def test_a_stream_failing_midway_ends_with_an_error_event(edge):
    status, body = curl(edge, "GenerateStream", {"prompt": "fail-after:2:UNAVAILABLE"}, edge["keys"]["json"])
    assert status == 200, body
    events = sse_events(body)
    assert [e["textDelta"] for e in events[:2]] == ["part 0 ", "part 1 "]
    assert len(events) == 3 and "final" not in events[-1]
    error = events[-1]["error"]
    assert error["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert error["message"] == "the test upstream is unavailable"
    assert details_by_type(error)["ErrorInfo"]["reason"] == "TEST_UNAVAILABLE"


def test_grpc_callers_of_a_failing_stream_get_its_status_not_an_error_message(edge, channel):
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    stream = stub.GenerateStream(inference_pb2.GenerateStreamRequest(prompt="fail-after:2:UNAVAILABLE"),
                                 metadata=auth(edge["keys"]["caller"]), timeout=10)
    received = []
    with pytest.raises(grpc.RpcError) as err:
        for message in stream:
            received.append(message)
    assert [m.text_delta for m in received] == ["part 0 ", "part 1 "]
    assert not any(m.HasField("error") for m in received)
    assert_grpc_error(err.value, grpc.StatusCode.UNAVAILABLE, "the test upstream is unavailable")


def test_a_client_cannot_claim_to_be_the_transcoder(edge, channel):
    """x-envoy-original-path marks transcoded calls; a gRPC client's copy is stripped."""
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    metadata = (*auth(edge["keys"]["caller"]), ("x-envoy-original-path", "/forged"))
    stream = stub.GenerateStream(inference_pb2.GenerateStreamRequest(prompt="fail-after:1:UNAVAILABLE"),
                                 metadata=metadata, timeout=10)
    received = []
    with pytest.raises(grpc.RpcError):
        for message in stream:
            received.append(message)
    assert [m.HasField("error") for m in received] == [False]


def access_log_entry(edge, request_id: str) -> dict | None:
    for line in edge["envoy"].log_path.read_text().splitlines():
        if request_id in line and line.startswith("{"):
            return json.loads(line)
    return None


def test_query_strings_never_reach_the_logs(edge):
    """A key or an address in a URL's query string is logged neither by Envoy nor by authz."""
    leaked_key = edge["keys"]["json"]
    query = f"?api_key={leaked_key}&email=jane.doe%40example.com"
    url = f"http://{edge['address']}/llmsuite.inference.v1.InferenceService/Generate{query}"
    request_ids = []
    for headers in ({}, {"x-api-key": edge["keys"]["json"]}):
        request = urllib.request.Request(url, data=b'{"prompt": "hi"}', method="POST",
                                         headers={"content-type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, request_id = response.status, response.headers["x-request-id"]
        except urllib.error.HTTPError as err:
            status, request_id = err.code, err.headers["x-request-id"]
        request_ids.append(request_id)
        # Without a key authz refuses it; with one, the transcoder refuses the unknown
        # query parameters (a clear 400, not an untranscoded call the service resets).
        assert status == (401 if not headers else 400)
    for request_id in request_ids:
        edge["envoy"].wait_until(lambda: access_log_entry(edge, request_id) is not None, "access log line", timeout=10)
        assert access_log_entry(edge, request_id)["method"] == "/llmsuite.inference.v1.InferenceService/Generate"
    denied = "denied /llmsuite.inference.v1.InferenceService/Generate: missing"
    logs = [path.read_text() for path in edge["authz_logs"]]
    assert any(denied in text for text in logs), "the refusal was logged"
    for text in [edge["envoy"].log_path.read_text(), *logs]:
        assert leaked_key not in text and "jane.doe" not in text and "api_key=" not in text
