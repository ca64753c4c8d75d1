"""The authz service as a real process: two replicas share a keys file and a Redis
revocation set; a revoked key stops working on both within one second."""

import sys
import time

import grpc
import pytest
import redis
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import struct_pb2

from gateway.keys import add_key, revoke_key
from tests.gateway.procs import start_gateway_service
from tests.harness import ServiceProcess, free_port, service_env

pytestmark = pytest.mark.integration

INFER = "/llmsuite.inference.v1.InferenceService/Generate"
# The promise; the replicas poll every 0.25 s, so this holds with margin.
REVOCATION_DEADLINE_S = 1.0


def check(port: int, path: str, headers: dict[str, str], jwt_payload: dict | None = None):
    http = attribute_context_pb2.AttributeContext.HttpRequest(path=path, method="POST", headers=headers)
    request = external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(http=http)))
    if jwt_payload is not None:
        payload = struct_pb2.Struct()
        payload.update({"jwt_payload": jwt_payload})
        request.attributes.metadata_context.filter_metadata["envoy.filters.http.jwt_authn"].CopyFrom(payload)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=5)


def headers_of(response) -> dict[str, str]:
    return {option.header.key: option.header.value for option in response.ok_response.headers}


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, redis_url):
    tmp = tmp_path_factory.mktemp("authz")
    keys_file = tmp / "keys.yaml"
    keys = {name: add_key(keys_file, name, "acme", ["inference"]) for name in ("file-rev", "redis-rev", "stays")}
    started: list[ServiceProcess] = []
    ports = []
    try:
        for name in ("authz-a", "authz-b"):
            process, port = start_gateway_service(
                "authz", {"keys_file": keys_file, "redis_url": redis_url}, tmp, name)
            started.append(process)
            ports.append(port)
        yield {"ports": ports, "keys": keys, "file": keys_file, "procs": started}
    finally:
        for process in started:
            process.stop()


def test_valid_key_is_allowed_with_identity_headers_and_credentials_dropped(replicas):
    for port in replicas["ports"]:
        response = check(port, INFER, {"authorization": f"Bearer {replicas['keys']['stays']}"})
        assert response.status.code == 0
        assert headers_of(response) == {"x-llmsuite-tenant": "acme", "x-llmsuite-key-id": "stays",
                                        "x-llmsuite-scopes": "inference"}
        assert set(response.ok_response.headers_to_remove) == {"authorization", "x-api-key"}


def test_denials_carry_status_http_code_and_message(replicas):
    port = replicas["ports"][0]
    missing = check(port, INFER, {})
    assert missing.status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert missing.denied_response.status.code == 401 and "missing API key" in missing.denied_response.body
    scope = check(port, "/llmsuite.retrieval.v1.RetrievalService/Upsert",
                  {"x-api-key": replicas["keys"]["stays"]})
    assert scope.status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert scope.denied_response.status.code == 403 and "retrieval:write" in scope.denied_response.body


def test_public_paths_remove_spoofed_identity(replicas):
    response = check(replicas["ports"][1], "/grpc.health.v1.Health/Check", {"x-llmsuite-tenant": "victim"})
    assert response.status.code == 0 and "x-llmsuite-tenant" in response.ok_response.headers_to_remove


def test_verified_jwt_claims_are_used(replicas):
    response = check(replicas["ports"][0], INFER, {},
                     {"sub": "billing", "tenant": "globex", "scope": "inference"})
    assert response.status.code == 0 and headers_of(response)["x-llmsuite-tenant"] == "globex"


def wait_denied_everywhere(ports: list[int], key: str, start: float) -> float:
    """Seconds from `start` until every replica rejects `key` as revoked."""
    pending = set(ports)
    while pending and time.monotonic() - start < 10:
        for port in list(pending):
            body = check(port, INFER, {"authorization": f"Bearer {key}"}).denied_response.body
            if "revoked" in body:
                pending.discard(port)
    assert not pending, f"replicas on {sorted(pending)} still accept the revoked key"
    return time.monotonic() - start


def test_revocation_in_the_keys_file_reaches_both_replicas_within_a_second(replicas):
    key = replicas["keys"]["file-rev"]
    assert all(check(port, INFER, {"x-api-key": key}).status.code == 0 for port in replicas["ports"])
    start = time.monotonic()
    revoke_key(replicas["file"], "file-rev")
    elapsed = wait_denied_everywhere(replicas["ports"], key, start)
    assert elapsed < REVOCATION_DEADLINE_S, f"took {elapsed:.2f}s"


def test_revocation_in_redis_reaches_both_replicas_within_a_second(replicas, redis_url):
    key = replicas["keys"]["redis-rev"]
    assert all(check(port, INFER, {"x-api-key": key}).status.code == 0 for port in replicas["ports"])
    start = time.monotonic()
    redis.Redis.from_url(redis_url).sadd("llmsuite:revoked-keys", "redis-rev")
    elapsed = wait_denied_everywhere(replicas["ports"], key, start)
    assert elapsed < REVOCATION_DEADLINE_S, f"took {elapsed:.2f}s"
    # Other keys are untouched.
    assert check(replicas["ports"][1], INFER, {"x-api-key": replicas["keys"]["stays"]}).status.code == 0


def test_a_broken_keys_file_keeps_the_last_good_keys(replicas):
    good = replicas["file"].read_text()
    staged = replicas["file"].with_suffix(".tmp")
    staged.write_text("keys: [")
    staged.replace(replicas["file"])
    try:
        # Wait until both replicas logged the failed reload: a real signal, not a sleep.
        for process in replicas["procs"]:
            process.wait_until(lambda p=process: "keeping the previous keys" in p.log_path.read_text(),
                               "failed reload logged", timeout=10)
        for port in replicas["ports"]:
            assert check(port, INFER, {"x-api-key": replicas["keys"]["stays"]}).status.code == 0
    finally:
        staged.write_text(good)
        staged.replace(replicas["file"])


def test_a_missing_keys_file_stops_the_service_at_start(tmp_path):
    process = ServiceProcess("authz-bad", [sys.executable, "-m", "gateway.authz"], tmp_path,
                             env=service_env("authz", {"port": free_port(), "metrics_port": free_port(),
                                                       "keys_file": tmp_path / "nope.yaml"}))
    process.start()
    assert process.proc.wait(30) == 2
    assert "keys file not found" in process.log_path.read_text()
