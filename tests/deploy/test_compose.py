"""The compose deployment, checked without a Docker engine: Debian's docker-compose
validates and resolves the file, then its content is checked against what the code
expects (services, ports, health checks, volumes, hardening, images)."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gateway import certs, deployments
from gateway.render import envoy_binary
from services.common.config import load
from tests.deploy.expected import ENVOY_PORT, ENVOY_STATS_PORT, HTTP_SERVICES, PYTHON_SERVICES, TRITON_PORTS
from tests.gateway.procs import descriptor_set
from tests.harness import REPO

COMPOSE = REPO / "compose"
COMPOSE_FILE = COMPOSE / "docker-compose.yml"
EXPECTED_SERVICES = {"envoy", "keys-init", "certs-init", "authz", "ratelimit", "router", "worker", "guardrails",
                     "retrieval", "generation", "generation-gpu", "triton", "triton-gpu", "redis", "qdrant",
                     "prometheus", "grafana", "openai"}
ONE_SHOT = {"keys-init", "certs-init"}
# Who may call each service's port (mutual TLS): Envoy, the router for its
# upstreams, the batch workers for the router, the OpenAI API for the router and
# retrieval (embeddings), and the service itself (its container's health check).
ALLOWED_CLIENTS = {
    "router": {"envoy", "router", "worker", "openai"},
    "guardrails": {"envoy", "router", "guardrails"},
    "retrieval": {"envoy", "router", "retrieval", "openai"},
    "openai": {"envoy", "openai"},
    "generation": {"envoy", "router", "generation"},
    "authz": {"envoy", "authz"},
    "ratelimit": {"envoy", "ratelimit"},
    "worker": {"worker"},
}

pytestmark = pytest.mark.skipif(shutil.which("docker-compose") is None,
                                reason="docker-compose not installed (make setup installs it)")


def compose_config(profile: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **(env or {})}
    return subprocess.run(["docker-compose", "-f", str(COMPOSE_FILE), "--profile", profile, "config"],
                          capture_output=True, text=True, env=environ, timeout=60)


# docker-compose renders the file: every test reading it starts that process.
@pytest.fixture(scope="module", params=[pytest.param(p, marks=pytest.mark.integration) for p in ("cpu", "gpu")])
def config(request) -> dict:
    result = compose_config(request.param, {"GRAFANA_ADMIN_PASSWORD": "test-only"})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def services(config) -> dict:
    return config["services"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    return env if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def volumes_of(service: dict) -> list[dict]:
    """Mounts as {source, target, read_only}; docker-compose 1.29 prints the short syntax."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts.append({"source": volume["source"], "target": volume["target"],
                           "read_only": bool(volume.get("read_only"))})
            continue
        source, target, *mode = volume.split(":")
        mounts.append({"source": source, "target": target, "read_only": mode == ["ro"]})
    return mounts


def ports_of(service: dict) -> list[dict]:
    """Published ports as {host_ip, published, target}."""
    ports = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            ports.append(port)
            continue
        host_ip, published, target = port.split("/")[0].split(":")
        ports.append({"host_ip": host_ip, "published": int(published), "target": int(target)})
    return ports


def test_every_component_is_there(services):
    assert set(services) == EXPECTED_SERVICES


@pytest.mark.integration
def test_grafana_needs_an_admin_password():
    result = compose_config("cpu")
    assert result.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in result.stderr


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_python_services_listen_where_the_suite_expects(services, name):
    module, section, _, port, metrics_port = PYTHON_SERVICES[name]
    for service_name in [name] + (["generation-gpu"] if name == "generation" else []):
        service = services[service_name]
        env = env_of(service)
        assert service["command"] == [module]
        assert env[f"LLMSUITE_{section.upper()}_PORT"] == str(port)
        assert env[f"LLMSUITE_{section.upper()}_METRICS_PORT"] == str(metrics_port)
        assert env[f"LLMSUITE_{section.upper()}_HOST"] == "0.0.0.0"
        assert {str(port), str(metrics_port)} <= set(map(str, service["expose"]))
        assert service["healthcheck"]["test"][-1] == str(port)
        assert ("--http" in service["healthcheck"]["test"]) is (name in HTTP_SERVICES)


def test_only_the_edge_and_dashboards_publish_ports_on_loopback(services):
    published = {name: ports_of(s) for name, s in services.items() if s.get("ports")}
    assert set(published) == {"envoy", "prometheus", "grafana"}
    for ports in published.values():
        assert all(p["host_ip"] == "127.0.0.1" for p in ports), ports
    assert published["envoy"][0]["target"] == ENVOY_PORT


def test_health_checks_and_start_order(services):
    for name, service in services.items():
        if name not in ONE_SHOT:
            assert service["healthcheck"].get("test") and not service["healthcheck"].get("disable"), name
        for dependency, condition in (service.get("depends_on") or {}).items():
            expected = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert condition["condition"] == expected, (name, dependency)
    assert set(services["envoy"]["depends_on"]) >= {"router", "authz", "ratelimit", "openai"}
    assert set(services["openai"]["depends_on"]) >= {"router", "retrieval"}
    assert services["generation"]["depends_on"] == {"triton": {"condition": "service_healthy"},
                                                    "certs-init": {"condition": "service_completed_successfully"}}
    assert services["generation-gpu"]["depends_on"] == {"triton-gpu": {"condition": "service_healthy"},
                                                        "certs-init": {"condition": "service_completed_successfully"}}


def test_restart_policies_bring_crashed_services_back(services):
    """Docker restarts a container whose process exits (a crash, an OOM kill); the
    one-shot key setup runs once. A hung but running process is marked unhealthy and
    Envoy's health checks route around it (Docker does not restart it)."""
    for name, service in services.items():
        assert service.get("restart") == ("no" if name in ONE_SHOT else "unless-stopped"), name


def test_every_health_check_is_bounded(services):
    for name, service in services.items():
        if name in ONE_SHOT:
            continue
        check = service["healthcheck"]
        assert {"interval", "timeout", "retries"} <= set(check), name
        assert int(check["retries"]) >= 1


def test_redis_keeps_its_append_only_file_on_a_volume(config, services):
    redis = services["redis"]
    args = redis["command"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data = args[args.index("--dir") + 1]
    assert {"source": "redis-data", "target": data, "read_only": False} in volumes_of(redis)
    assert "redis-data" in config["volumes"]


def test_profiles_pick_the_triton_flavour(services):
    assert services["triton"]["profiles"] == ["cpu"] and services["generation"]["profiles"] == ["cpu"]
    assert services["triton-gpu"]["profiles"] == ["gpu"] and services["generation-gpu"]["profiles"] == ["gpu"]
    # Under the gpu profile the same names answer, so the router and generation need no change.
    assert "triton" in services["triton-gpu"]["networks"]["default"]["aliases"]
    assert "generation" in services["generation-gpu"]["networks"]["default"]["aliases"]
    devices = services["triton-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert set(map(str, services["triton"]["expose"])) == set(map(str, TRITON_PORTS.values()))


# Services that write inside their image: Qdrant (beside its storage volume) and
# TensorRT-LLM (engine and kernel caches).
WRITABLE_ROOT = {"qdrant", "triton-gpu"}


def test_hardening(services):
    for name, service in services.items():
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert bool(service.get("read_only")) is (name not in WRITABLE_ROOT), name


def test_images_are_pinned(services):
    for name, service in services.items():
        image = service["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
        assert re.match(r"v?\d+\.\d+", tag), f"{name}: {image} is not pinned to a version"


def test_volumes_the_code_expects(config, services):
    assert set(config["volumes"]) >= {"gateway-keys", "qdrant-data", "prometheus-data", "grafana-data", "redis-data"}
    keys_mount = next(v for v in volumes_of(services["authz"]) if v["source"] == "gateway-keys")
    assert env_of(services["authz"])["LLMSUITE_AUTHZ_KEYS_FILE"].startswith(keys_mount["target"] + "/")
    assert keys_mount.get("read_only") is True
    assert any(v["source"] == "gateway-keys" and v["target"] == "/keys" for v in volumes_of(services["keys-init"]))
    assert any(v["target"] == "/qdrant/storage" for v in volumes_of(services["qdrant"]))
    assert {v["target"] for v in volumes_of(services["triton-gpu"])} == {"/repository", "/engines", "/models"}


def _image_owned_dirs() -> set[str]:
    """Folders the Python image makes and gives its unprivileged user: a fresh named volume
    mounted on one of them belongs to that user too (Docker copies the folder's owner)."""
    dockerfile = (COMPOSE / "python.Dockerfile").read_text().replace("\\\n", " ")
    made = set(re.search(r"mkdir -p ([^&]+)&&", dockerfile).group(1).split())
    owned = re.search(r"chown -R 10001:10001 ([^\n&]+)", dockerfile).group(1).split()
    return {path for path in made if any(path == root or path.startswith(root + "/") for root in owned)}


def test_the_router_writes_its_audit_log_to_a_volume_of_its_own_per_container(config, services):
    router = services["router"]
    audit_dir = env_of(router)["LLMSUITE_ROUTER_AUDIT_DIR"]
    # Replicas (--scale router=N) share the volume; each takes the folder of its host name.
    assert audit_dir.endswith("/{hostname}")
    volume_root = audit_dir.removesuffix("/{hostname}")
    mount = next(v for v in volumes_of(router) if v["target"] == volume_root)
    assert mount["source"] in config["volumes"] and not mount["read_only"]
    assert volume_root in _image_owned_dirs(), "a fresh audit volume must be writable by the router's user"
    # Not a fixed key in the file: the operator's secret, or a random one at start.
    assert env_of(router)["LLMSUITE_ROUTER_AUDIT_HMAC_KEY"] == ""
    assert not any(v["target"] == volume_root for name, s in services.items() if name != "router"
                   for v in volumes_of(s))


def test_every_certificate_volume_is_writable_by_certs_init():
    assert {f"/certs/{name}" for name in certified_workloads()} <= _image_owned_dirs()


def certified_workloads() -> list[str]:
    """The names certs-init passes to `python -m gateway.certs --names`."""
    command = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["certs-init"]["command"][0]
    return command.split("--names ", 1)[1].split()[0].split(",")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Path:
    """What certs-init makes, here: one folder per workload."""
    out = tmp_path_factory.mktemp("certs")
    certs.issue(out, certified_workloads())
    return out


def certificate_folder(service_name: str, service: dict) -> str:
    """The workload name of the cert volume mounted at /certs."""
    mount = next(v for v in volumes_of(service) if v["target"] == "/certs")
    assert mount["read_only"] is True, service_name
    return mount["source"].removeprefix("certs-")


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_the_mounted_settings_file_is_valid_for_each_service(services, certificates, name):
    """The service's settings as compose gives them: the mounted file and its environment,
    with the certificate paths pointing at certificates made as certs-init makes them."""
    _, section, settings_cls, _, _ = PYTHON_SERVICES[name]
    service = services[name]
    env = env_of(service)
    mount = next(v for v in volumes_of(service) if v["target"] == env["LLMSUITE_CONFIG"])
    assert Path(mount["source"]).is_file() and mount.get("read_only") is True
    folder = certificates / certificate_folder(name, service)
    environ = {key: value.replace("/certs", str(folder)) if key.startswith("LLMSUITE_TLS_") else value
               for key, value in env.items()} | {"LLMSUITE_CONFIG": mount["source"]}
    settings = load(settings_cls, section, environ=environ)
    assert settings.tls_cert_file == str(folder / "cert.pem")
    assert set(settings.tls_allowed_clients) == ALLOWED_CLIENTS[name]


def test_each_service_has_its_own_certificate_and_envoy_its_own(services):
    """Compose's network is flat, so the services' gRPC ports take only mutual TLS from
    the callers each one lists; every workload mounts only its own key."""
    owners = {}
    for name in PYTHON_SERVICES:
        for service_name in [name] + (["generation-gpu"] if name == "generation" else []):
            folder = certificate_folder(service_name, services[service_name])
            assert folder == name, service_name
            owners.setdefault(folder, set()).add(service_name)
    assert all(len(users) == 1 or users == {"generation", "generation-gpu"} for users in owners.values())
    envoy = {v["target"]: v for v in volumes_of(services["envoy"])}["/etc/envoy/certs"]
    assert envoy["source"] == "certs-envoy" and envoy["read_only"] is True
    made = {v["source"].removeprefix("certs-"): v["target"] for v in volumes_of(services["certs-init"])}
    assert made == {name: f"/certs/{name}" for name in ["envoy", *PYTHON_SERVICES]}
    assert set(certified_workloads()) == set(made)
    # Envoy (uid 101) reads its key through the services' group.
    assert services["envoy"]["group_add"] == ["10001"]


def test_envoy_upstreams_are_compose_services(services):
    config = yaml.safe_load((COMPOSE / "envoy.yaml").read_text())
    names = {n: n for n in services}
    for name, service in services.items():
        for alias in ((service.get("networks") or {}).get("default") or {}).get("aliases", []):
            names[alias] = name
    for cluster in config["static_resources"]["clusters"]:
        for endpoint in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]:
            address = endpoint["endpoint"]["address"]["socket_address"]
            if address["address"] == "127.0.0.1":
                continue  # the admin interface, inside Envoy's own container
            service = services[names[address["address"]]]
            assert str(address["port_value"]) in set(map(str, service["expose"])), cluster["name"]
    listeners = {item["name"]: item["address"]["socket_address"]["port_value"]
                 for item in config["static_resources"]["listeners"]}
    assert listeners == {"edge": ENVOY_PORT, "stats": ENVOY_STATS_PORT}


def test_generated_envoy_configs_are_current():
    for path, text in deployments.rendered().items():
        assert path.read_text() == text, f"{path.relative_to(REPO)} is stale: run python -m gateway.deployments"


@pytest.mark.integration
def test_compose_envoy_config_is_accepted_by_envoy(tmp_path):
    certs.issue(tmp_path / "certs", ["envoy"])
    text = ((COMPOSE / "envoy.yaml").read_text()
            .replace(deployments.DESCRIPTOR_SET, str(descriptor_set(tmp_path)))
            .replace(deployments.COMPOSE_CERTS, str(tmp_path / "certs" / "envoy")))
    clusters = yaml.safe_load(text)["static_resources"]["clusters"]
    for cluster in clusters:
        if cluster["name"] != "envoy_admin":
            tls = cluster["transport_socket"]["typed_config"]["common_tls_context"]
            assert tls["validation_context"]["match_typed_subject_alt_names"][0]["matcher"] == {"exact": cluster["name"]}
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    result = subprocess.run([str(envoy_binary()), "--mode", "validate", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_prometheus_scrapes_every_metrics_port():
    jobs = {job["job_name"]: job for job in yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())
            ["scrape_configs"]}
    expected = {name: metrics for name, (*_, metrics) in PYTHON_SERVICES.items()}
    expected |= {"envoy": ENVOY_STATS_PORT, "triton": TRITON_PORTS["metrics"]}
    for name, port in expected.items():
        sd = jobs[name]["dns_sd_configs"][0]
        assert sd["names"] == [name] and sd["port"] == port, name
    assert jobs["envoy"]["metrics_path"] == "/stats/prometheus"


def test_prometheus_loads_the_suites_alert_rules_and_grafana_the_dashboard(services):
    """The same rules file as `make run-observed` (services/stack/prometheus.py)."""
    rule_files = yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())["rule_files"]
    mounts = {v["target"]: Path(v["source"]) for v in volumes_of(services["prometheus"])}
    assert [mounts[path] for path in rule_files] == [COMPOSE / "prometheus" / "alerts.yml"]
    grafana = {v["target"]: Path(v["source"]) for v in volumes_of(services["grafana"])}
    assert grafana["/var/lib/grafana/dashboards"] == COMPOSE / "grafana" / "dashboards"


def test_dashboard_queries_use_metrics_the_code_exports():
    dashboard = json.loads((COMPOSE / "grafana" / "dashboards" / "llmsuite.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    sources = "\n".join(p.read_text() for folder in ("services", "gateway") for p in (REPO / folder).rglob("*.py"))
    for expr in exprs:
        for metric in re.findall(r"\b((?:llmsuite|gen_ai)_[a-z_]+)", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            assert f'"{base}"' in sources, f"{metric} in the dashboard is not exported by any service"


DOCKERFILES = sorted(COMPOSE.glob("*.Dockerfile"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pin_bases_run_unprivileged_and_check_health(dockerfile):
    text = dockerfile.read_text()
    for base in re.findall(r"^FROM\s+(\S+)", text, re.M):
        assert re.search(r":v?\d+\.\d+", base), f"{base} is not pinned"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert re.search(r"^HEALTHCHECK\s", text, re.M)
    for source in re.findall(r"^COPY\s+(?!--from)(\S+)", text, re.M):
        assert (REPO / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
        assert source in (COMPOSE / f"{dockerfile.name}.dockerignore").read_text(), \
            f"{source} is excluded from the build context"


@pytest.mark.integration
def test_integration_script_is_valid_bash():
    script = COMPOSE / "integration-test.sh"
    assert os.access(script, os.X_OK)
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
