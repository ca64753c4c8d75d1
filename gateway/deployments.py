"""Envoy configs for the deployments, rendered from the same template as `make run`.

    python -m gateway.deployments      # rewrites compose/envoy.yaml and deploy/k8s/base/envoy/envoy.yaml

Both are committed so that the deployments need no Python at deploy time;
tests/deploy checks that they match what this module renders.
"""

from pathlib import Path

from gateway.render import EdgeSecurity, EnvoyParams, UpstreamTls, render

REPO = Path(__file__).resolve().parent.parent
COMPOSE_ENVOY = REPO / "compose" / "envoy.yaml"
K8S_ENVOY = REPO / "deploy" / "k8s" / "base" / "envoy" / "envoy.yaml"

# Where the Envoy image (compose/envoy.Dockerfile) puts the descriptor set.
DESCRIPTOR_SET = "/etc/envoy/llmsuite.pb"
STATS_PORT = 9902
# Where compose mounts Envoy's certificate volume (made by certs-init).
COMPOSE_CERTS = "/etc/envoy/certs"


def _params(upstream: dict[str, str], authz: str, ratelimit: str) -> EnvoyParams:
    return EnvoyParams(
        listen_host="0.0.0.0", listen_port=8080, admin_port=9901, stats_port=STATS_PORT,
        upstreams={name: [address] for name, address in upstream.items()},
        security=EdgeSecurity(authz=[authz], ratelimit=[ratelimit]),
        descriptor_set=DESCRIPTOR_SET,
    )


def compose_params() -> EnvoyParams:
    """Compose service names: Docker's DNS answers every replica of a scaled service.
    Compose's network is flat, so Envoy reaches the services over mutual TLS."""
    params = _params({"router": "router:50051", "guardrails": "guardrails:50052",
                      "retrieval": "retrieval:50053", "generation": "generation:50054", "openai": "openai:8090"},
                     "authz:50061", "ratelimit:50062")
    params.upstream_tls = UpstreamTls(cert_file=f"{COMPOSE_CERTS}/cert.pem", key_file=f"{COMPOSE_CERTS}/key.pem",
                                      ca_file=f"{COMPOSE_CERTS}/ca.pem")
    return params


def kubernetes_params() -> EnvoyParams:
    """Headless services (one DNS answer per ready pod), so Envoy balances across
    pods itself and health-checks each one instead of going through kube-proxy.
    NetworkPolicies decide who reaches the services' ports (deploy/k8s/base/networkpolicy.yaml)."""
    return _params({"router": "router-headless:50051", "guardrails": "guardrails-headless:50052",
                    "retrieval": "retrieval-headless:50053", "generation": "generation-headless:50054",
                    "openai": "openai-headless:8090"},
                   "authz-headless:50061", "ratelimit-headless:50062")


def rendered() -> dict[Path, str]:
    return {COMPOSE_ENVOY: render(compose_params()), K8S_ENVOY: render(kubernetes_params())}


def main() -> None:
    for path, text in rendered().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
