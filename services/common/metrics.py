"""Prometheus metrics shared by every service, served on the metrics port."""

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPC_REQUESTS = Counter(
    "llmsuite_rpc_requests_total", "RPCs handled, by method and status code.",
    ["service", "method", "code"],
)
RPC_LATENCY = Histogram(
    "llmsuite_rpc_duration_seconds", "RPC handling time (stream duration for streams), by method and code.",
    ["service", "method", "code"],
    # 0.5, 2 and 5 are bounds: the latency objectives (compose/prometheus/alerts.yml) are
    # p50 < 0.5 s, p95 < 2 s and p99 < 5 s.
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 2.5, 5, 10, 30, 60),
)
RPC_IN_FLIGHT = Gauge(
    "llmsuite_rpc_in_flight", "RPCs being handled now.", ["service", "method"],
)


def serve_metrics(port: int, host: str = "0.0.0.0") -> int:
    """Starts the /metrics HTTP endpoint in a thread; returns the bound port."""
    server, _thread = start_http_server(port, addr=host)
    return server.server_port
