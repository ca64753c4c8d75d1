"""The rendered Envoy config: filter order, security switches, and Envoy accepts it."""

import subprocess

import pytest
import yaml
from llmsuite.generation.v1 import generation_pb2
from llmsuite.guardrails.v1 import guardrails_pb2
from llmsuite.inference.v1 import inference_pb2
from llmsuite.retrieval.v1 import retrieval_pb2

from gateway.render import STREAMING_REQUEST_METHODS, EdgeSecurity, EnvoyParams, Jwt, envoy_binary, render
from tests.gateway.procs import descriptor_set

FULL_ORDER = [
    "envoy.filters.http.lua",
    "envoy.filters.http.header_mutation",
    "envoy.filters.http.local_ratelimit",
    "envoy.filters.http.jwt_authn",
    "envoy.filters.http.ext_authz",
    "envoy.filters.http.ratelimit",
    "envoy.filters.http.buffer",
    "envoy.filters.http.grpc_json_transcoder",
    "envoy.filters.http.router",
]


def network_filters(config: dict) -> dict[str, dict]:
    listener = next(item for item in config["static_resources"]["listeners"] if item["name"] == "edge")
    return {f["name"]: f["typed_config"] for f in listener["filter_chains"][0]["filters"]}


def edge_listener(config: dict) -> dict:
    return network_filters(config)["envoy.filters.network.http_connection_manager"]


def filters(config: dict) -> list[str]:
    return [f["name"] for f in edge_listener(config)["http_filters"]]


def full_params(tmp_path) -> EnvoyParams:
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}')
    return EnvoyParams(listen_port=18080, admin_port=19901, stats_port=19902,
                       security=EdgeSecurity(authz=["a1:50061", "a2:50061"], ratelimit=["r1:50062"],
                                             jwt=Jwt(jwks_path=str(jwks))),
                       descriptor_set=str(descriptor_set(tmp_path)))


def test_client_streaming_methods_match_the_protos():
    streaming = set()
    for module in (generation_pb2, guardrails_pb2, inference_pb2, retrieval_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            streaming |= {f"/{service.full_name}/{m.name}" for m in service.methods if m.client_streaming}
    # Server reflection (both API versions) is a bidirectional stream too.
    streaming |= {f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo" for version in ("v1alpha", "v1")}
    assert {path for path, *_ in STREAMING_REQUEST_METHODS} == streaming


@pytest.mark.integration
def test_full_edge_filter_order_and_envoy_accepts_it(tmp_path):
    text = render(full_params(tmp_path))
    config = yaml.safe_load(text)
    assert filters(config) == FULL_ORDER
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert {"authz", "ratelimit", "envoy_admin"} <= set(clusters)
    assert len(clusters["authz"]["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 2
    assert all(clusters[name]["lb_policy"] == "LEAST_REQUEST" and "outlier_detection" in clusters[name]
               for name in ("router", "guardrails", "retrieval", "generation"))
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    result = subprocess.run([str(envoy_binary()), "--mode", "validate", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_open_edge_still_strips_identity_headers():
    config = yaml.safe_load(render(EnvoyParams()))
    names = filters(config)
    assert "envoy.filters.http.ext_authz" not in names and "envoy.filters.http.ratelimit" not in names
    mutation = next(f for f in edge_listener(config)["http_filters"]
                    if f["name"] == "envoy.filters.http.header_mutation")["typed_config"]["mutations"]
    assert {m["remove"] for m in mutation["request_mutations"]} == {
        "x-llmsuite-tenant", "x-llmsuite-key-id", "x-llmsuite-scopes", "x-envoy-original-path"}
    assert "envoy.filters.network.ratelimit" not in network_filters(config)


@pytest.mark.parametrize("fail_closed", [False, True])
def test_ratelimit_failure_mode(fail_closed):
    config = yaml.safe_load(render(EnvoyParams(security=EdgeSecurity(ratelimit_fail_closed=fail_closed))))
    ratelimit = next(f for f in edge_listener(config)["http_filters"] if f["name"] == "envoy.filters.http.ratelimit")
    assert ratelimit["typed_config"]["failure_mode_deny"] is fail_closed
    connections = network_filters(config)["envoy.filters.network.ratelimit"]
    assert connections["failure_mode_deny"] is fail_closed
    assert connections["descriptors"] == [{"entries": [{"key": "connection_address",
                                                         "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}]}]


def test_timeouts_and_header_limits():
    hcm = edge_listener(yaml.safe_load(render(EnvoyParams(request_headers_timeout="3s", idle_timeout="7s",
                                                           max_request_headers_kb=20))))
    assert hcm["request_headers_timeout"] == "3s" and hcm["common_http_protocol_options"]["idle_timeout"] == "7s"
    assert hcm["stream_idle_timeout"] == "120s"
    # The codec allows more, so that the Lua filter's clear answer is what callers see.
    assert hcm["max_request_headers_kb"] == 60
    lua = hcm["http_filters"][0]["typed_config"]["default_source_code"]["inline_string"]
    assert "local LIMIT = 20480" in lua
    assert "%REQ_WITHOUT_QUERY(:PATH)%" in str(hcm["access_log"]) and "%REQ(:PATH)%" not in str(hcm["access_log"])


def test_no_global_ratelimit_without_limiter_addresses():
    config = yaml.safe_load(render(EnvoyParams(security=EdgeSecurity(ratelimit=[]))))
    assert "envoy.filters.http.ratelimit" not in filters(config)
    assert "envoy.filters.network.ratelimit" not in network_filters(config)
    assert "rate_limits" not in edge_listener(config)["route_config"]["virtual_hosts"][0]


def test_streaming_request_routes_come_first_and_skip_buffering():
    routes = edge_listener(yaml.safe_load(render(EnvoyParams())))["route_config"]["virtual_hosts"][0]["routes"]
    first = routes[:len(STREAMING_REQUEST_METHODS)]
    assert [r["match"]["path"] for r in first] == [p for p, *_ in STREAMING_REQUEST_METHODS]
    assert all(r["typed_per_filter_config"]["envoy.filters.http.buffer"]["disabled"] for r in first)
    assert all("retry_policy" in r["route"] for r in routes)
