"""The stack's components (services/stack/stack.py) without starting them: router replicas."""

import yaml

from services.stack.stack import Ports, Stack
from tests.stack_fixtures import CPU_MODEL_REPOSITORY


def test_router_replicas_get_their_own_ports_and_are_all_behind_envoy(tmp_path):
    ports = Ports.free(routers=2)
    stack = Stack(ports=ports, var_dir=tmp_path, model_repository=CPU_MODEL_REPOSITORY)
    routers = {c.name: c.env for c in stack.components() if c.argv[-1] == "services.router"}
    assert list(routers) == ["router", "router-2"]
    listening = {env["LLMSUITE_ROUTER_PORT"] for env in routers.values()}
    metrics = {env["LLMSUITE_ROUTER_METRICS_PORT"] for env in routers.values()}
    assert len(listening) == 2 and len(metrics) == 2 and not listening & metrics
    envoy = yaml.safe_load((tmp_path / "envoy.yaml").read_text())
    cluster = next(c for c in envoy["static_resources"]["clusters"] if c["name"] == "router")
    endpoints = {e["endpoint"]["address"]["socket_address"]["port_value"]
                 for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]}
    assert endpoints == {int(port) for port in listening}


def test_one_router_by_default():
    assert [name for name, _, _ in Ports().routers()] == ["router"]
    assert Ports().routers() == [("router", 50051, 9101)]
