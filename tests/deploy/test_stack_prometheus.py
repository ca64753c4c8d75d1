"""`make run-observed`: Prometheus starts last and scrapes every process the stack starts."""

import yaml

from services.stack.prometheus import RULES
from services.stack.stack import Ports, Stack


def _metrics_ports(ports: Ports, workers: bool) -> set[int]:
    """Every metrics endpoint of the stack: each service's metrics port, Envoy's admin, Triton's."""
    named = {value for name, value in vars(ports).items() if name.endswith("_metrics")}
    if not workers:
        named.discard(ports.worker_metrics)
    return named | {ports.envoy_admin} | {metrics for _, _, metrics in ports.routers()}


def test_without_the_flag_no_prometheus_starts(tmp_path):
    assert "prometheus" not in [c.name for c in Stack(ports=Ports(), var_dir=tmp_path).components()]


def test_prometheus_starts_last_and_scrapes_every_metrics_port(tmp_path, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    ports = Ports(router_replicas=((50071, 9171),))
    stack = Stack(ports=ports, var_dir=tmp_path, scrape_interval_s=1.0,
                  overrides={"router": {"redis_url": "redis://127.0.0.1:6390/0"}})
    components = stack.components()
    assert components[-1].name == "prometheus"
    assert f"--web.listen-address=127.0.0.1:{ports.prometheus}" in components[-1].argv
    config = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    assert config["rule_files"] == [str(RULES)]
    assert config["global"]["scrape_interval"] == "1000ms"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    scraped = {int(target.rsplit(":", 1)[1]) for job in jobs.values() for target in job["static_configs"][0]["targets"]}
    assert scraped == _metrics_ports(ports, workers=True)
    assert jobs["envoy"]["metrics_path"] == "/stats/prometheus"
    assert set(jobs) == {"envoy", "authz", "ratelimit", "router", "guardrails", "retrieval", "generation",
                         "openai", "triton", "worker"}
