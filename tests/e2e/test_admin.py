"""AdminService through the edge: only `admin` keys get in (gRPC and HTTP/JSON alike),
reflection lists it, and every call that reaches the router is audited."""

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from llmsuite.admin.v1 import admin_pb2, admin_pb2_grpc

from gateway.keys import add_key
from services.audit.chain import verify
from services.audit.log import chain_files
from tests.harness import poll

pytestmark = pytest.mark.integration

SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
METHODS = [method.name for method in SERVICE.methods]


@pytest.fixture(scope="module")
def admin_key(stack) -> str:
    return add_key(stack.var_dir / "gateway" / "keys.yaml", "e2e-ops", "default", ["admin"])


def call(edge: str, method: str, metadata) -> grpc.RpcError | bytes:
    """One AdminService call with an empty request; the error, or the reply's bytes."""
    with grpc.insecure_channel(edge) as channel:
        rpc = channel.unary_unary(f"/{SERVICE.full_name}/{method}")
        try:
            return rpc(b"", metadata=metadata, timeout=10)
        except grpc.RpcError as err:
            return err


def curl(stack, method: str, body: dict, key: str | None) -> tuple[int, str]:
    headers = ["-H", f"authorization: Bearer {key}"] if key else []
    result = subprocess.run(
        ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *headers, "-H", "content-type: application/json",
         f"http://127.0.0.1:{stack.ports.envoy}/{SERVICE.full_name}/{method}", "-d", json.dumps(body)],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    text, _, status = result.stdout.rpartition("\n")
    return int(status), text


@pytest.mark.parametrize("method", METHODS)
def test_every_admin_rpc_is_refused_without_the_admin_scope(stack, edge, auth, method):
    refused = call(edge, method, auth)
    assert isinstance(refused, grpc.RpcError) and refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "lacks scope 'admin'" in refused.details()
    anonymous = call(edge, method, ())
    assert isinstance(anonymous, grpc.RpcError) and anonymous.code() == grpc.StatusCode.UNAUTHENTICATED
    status, body = curl(stack, method, {}, stack.api_key)
    assert status == 403, body
    status, body = curl(stack, method, {}, None)
    assert status == 401, body


def test_an_admin_key_gets_in_over_grpc_and_http_json_and_each_call_is_audited(stack, edge, admin_key):
    metadata = (("authorization", f"Bearer {admin_key}"),)
    # authz re-reads the keys file within a poll or two.
    poll(lambda: not isinstance(call(edge, "ListRollouts", metadata), grpc.RpcError), "the new admin key works")
    with grpc.insecure_channel(edge) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        rollout = stub.GetRollout(admin_pb2.GetRolloutRequest(alias="full"), metadata=metadata, timeout=10).rollout
        assert rollout.alias == "full" and rollout.weights[0].weight == 100
        with pytest.raises(grpc.RpcError) as caught:
            stub.SetWeights(admin_pb2.SetWeightsRequest(alias="full", weights=[
                admin_pb2.VariantWeight(variant="full", weight=90),
                admin_pb2.VariantWeight(variant="full@7", weight=10)]), metadata=metadata, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "full@7" in caught.value.details()
    status, body = curl(stack, "GetRollout", {"alias": "light"}, admin_key)
    assert status == 200, body
    assert json.loads(body)["rollout"]["state"] == "ROLLOUT_STATE_STABLE"
    status, body = curl(stack, "GetTemplate", {"name": "nonexistent"}, admin_key)
    assert status == 404 and "no template" in json.loads(body)["message"]

    audit_dir = stack.var_dir / "audit" / "router"

    def audited():
        files = chain_files(audit_dir)
        records = [json.loads(line) for path in files for line in path.read_text().splitlines()]
        return [(r["action"], r["target"], r["outcome"]) for r in records
                if r["kind"] == "admin" and r["key_id"] == "e2e-ops"]

    expected = [("GetRollout", "full", "OK"), ("SetWeights", "full", "INVALID_ARGUMENT"),
                ("GetRollout", "light", "OK"), ("GetTemplate", "nonexistent", "NOT_FOUND")]
    # The writer thread flushes right after each batch.
    actions = poll(lambda: (lambda seen: seen if seen[-4:] == expected else None)(audited()),
                   "the admin calls in the audit log")
    assert actions[0] == ("ListRollouts", "", "OK")
    assert verify(chain_files(audit_dir)).ok


def test_reflection_through_the_edge_lists_and_describes_the_admin_service(edge):
    grpcurl = Path(sys.executable).parent / "grpcurl"
    listing = subprocess.run([str(grpcurl), "-plaintext", edge, "list"], capture_output=True, text=True, timeout=30)
    assert SERVICE.full_name in listing.stdout.split(), listing.stdout + listing.stderr
    described = subprocess.run([str(grpcurl), "-plaintext", edge, "describe", SERVICE.full_name],
                               capture_output=True, text=True, timeout=30)
    assert "rpc SetWeights" in described.stdout and "rpc RollbackTemplate" in described.stdout
