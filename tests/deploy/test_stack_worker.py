"""`make run` starts a batch-job worker beside the router exactly when the router uses Redis."""

from services.stack.stack import Ports, Stack


def names(stack: Stack) -> list[str]:
    return [component.name for component in stack.components()]


def test_without_redis_the_router_runs_jobs_itself(tmp_path, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert "worker" not in names(Stack(ports=Ports(), var_dir=tmp_path))


def test_with_redis_a_worker_starts_after_the_router_and_calls_it(tmp_path, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    stack = Stack(ports=Ports(), var_dir=tmp_path, overrides={"router": {"redis_url": "redis://127.0.0.1:6390/0"}})
    components = {component.name: component for component in stack.components()}
    order = list(components)
    assert order.index("router") < order.index("worker") < order.index("envoy")
    env = components["worker"].env
    assert env["LLMSUITE_WORKER_ROUTER_URL"] == "127.0.0.1:50051"
    assert env["LLMSUITE_WORKER_REDIS_URL"] == "redis://127.0.0.1:6390/0"
    assert (env["LLMSUITE_WORKER_PORT"], env["LLMSUITE_WORKER_METRICS_PORT"]) == ("50055", "9105")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6391/0")
    assert "worker" in names(Stack(ports=Ports(), var_dir=tmp_path / "env"))
