"""The Kubernetes manifests: every overlay rendered with `kubectl kustomize`, then
checked structurally (probes, hardening, autoscaling, disruption budgets, the
headless services Envoy discovers, GPU requests)."""

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from services.common.config import load
from tests.deploy.expected import (
    ENVOY_PORT,
    ENVOY_STATS_PORT,
    HTTP_HEALTH_PATH,
    HTTP_SERVICES,
    PYTHON_SERVICES,
    TRITON_PORTS,
)
from tests.harness import REPO

K8S = REPO / "deploy" / "k8s"
NAMESPACE = "llmsuite"
GPU = "nvidia.com/gpu"

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")


def kustomize(overlay: str) -> list[dict]:
    result = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


# kubectl renders the overlays: every test reading them starts that process.
@pytest.fixture(scope="module", params=[pytest.param(p, marks=pytest.mark.integration) for p in ("cpu", "gpu")])
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, kustomize(request.param)


@pytest.fixture(scope="module")
def docs(overlay) -> list[dict]:
    return overlay[1]


def of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs: list[dict]) -> dict[str, dict]:
    return of_kind(docs, "Deployment") | of_kind(docs, "StatefulSet")


def container(workload: dict) -> dict:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def env_of(c: dict) -> dict[str, str]:
    """Literal values; a variable taken from a Secret (valueFrom) reads as ""."""
    return {e["name"]: e.get("value", "") for e in c.get("env", [])}


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_every_component_runs_as_a_workload(docs):
    names = set(workloads(docs))
    assert names == {"envoy", "triton", "redis", "qdrant", *PYTHON_SERVICES}
    # The router for its audit log's volume per replica (test_the_router_keeps_each_replicas_audit_log...).
    assert set(of_kind(docs, "StatefulSet")) == {"redis", "qdrant", "router"}


def test_everything_lives_in_the_namespace(docs):
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, (doc["kind"], doc["metadata"]["name"])
    assert of_kind(docs, "Namespace")[NAMESPACE]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] \
        == "restricted"


def test_containers_are_non_root_read_only_and_bounded(docs):
    for name, workload in workloads(docs).items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod.get("automountServiceAccountToken") is False, name
        c = container(workload)
        security = c["securityContext"]
        assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"], name
        assert c["readinessProbe"] and c["livenessProbe"], name
        # A read-only root needs somewhere to write temporary files.
        assert any(m["mountPath"] in ("/tmp", "/data") for m in c["volumeMounts"]), name


def probe_window_s(probe: dict) -> int:
    """How long a probe must fail before it acts (Kubernetes' defaults: 10 s, 3 times)."""
    return probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


def test_every_container_is_restarted_when_it_hangs_or_dies(docs):
    """The kubelet restarts a container that exits (restartPolicy Always) or whose
    liveness probe fails for a while; readiness takes it out of traffic sooner."""
    for name, workload in workloads(docs).items():
        pod = workload["spec"]["template"]["spec"]
        assert pod.get("restartPolicy", "Always") == "Always", name
        c = container(workload)
        liveness, readiness = c["livenessProbe"], c["readinessProbe"]
        assert probe_window_s(liveness) <= 120, f"{name}: a hung process would stay for minutes"
        assert probe_window_s(readiness) <= probe_window_s(liveness), name
        # Slow starters are covered by a startup probe, not by a lax liveness probe.
        if name in PYTHON_SERVICES or name == "triton":
            assert probe_window_s(c["startupProbe"]) >= 120, name


def test_redis_keeps_its_append_only_file_on_a_persistent_volume(docs):
    redis = workloads(docs)["redis"]
    args = container(redis)["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data = args[args.index("--dir") + 1]
    mount = next(m for m in container(redis)["volumeMounts"] if m["mountPath"] == data)
    claims = {t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]}
    assert mount["name"] in claims
    assert not any(v["name"] == mount["name"] for v in redis["spec"]["template"]["spec"].get("volumes", []))


def test_the_router_keeps_each_replicas_audit_log_on_its_own_volume(docs):
    """One writer per audit directory, and a replica's chain must outlive its pod: a
    claim per replica (volumeClaimTemplates), kept when pods go or the set scales in."""
    router = of_kind(docs, "StatefulSet")["router"]
    spec = router["spec"]
    c = container(router)
    audit_dir = env_of(c)["LLMSUITE_ROUTER_AUDIT_DIR"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == audit_dir)
    assert not mount.get("readOnly")
    assert mount["name"] in {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}
    assert not any(v["name"] == mount["name"] for v in spec["template"]["spec"].get("volumes", []))
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    # Started in parallel like a Deployment's pods, and found by Envoy through the headless service.
    assert spec["podManagementPolicy"] == "Parallel"
    assert of_kind(docs, "Service")[spec["serviceName"]]["spec"]["clusterIP"] == "None"
    hmac = next(e for e in c["env"] if e["name"] == "LLMSUITE_ROUTER_AUDIT_HMAC_KEY")
    assert hmac["valueFrom"]["secretKeyRef"] == {"name": "router-audit", "key": "hmac-key", "optional": True}


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_python_services_use_health_probes_on_their_documented_port(docs, name):
    """gRPC health for the gRPC services; GET /healthz for the HTTP one (the OpenAI API)."""
    module, section, _, port, metrics_port = PYTHON_SERVICES[name]
    c = container(workloads(docs)[name])
    assert c["args"] == [module] and c["image"].startswith("llmsuite/python:")
    env = env_of(c)
    assert env[f"LLMSUITE_{section.upper()}_PORT"] == str(port)
    assert env[f"LLMSUITE_{section.upper()}_METRICS_PORT"] == str(metrics_port)
    kind = "http" if name in HTTP_SERVICES else "grpc"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {kind: port, "metrics": metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if name in HTTP_SERVICES:
            assert c[probe]["httpGet"] == {"path": HTTP_HEALTH_PATH, "port": "http"}, probe
        else:
            assert c[probe]["grpc"]["port"] == port, probe


def test_each_stateless_workload_has_an_autoscaler_and_a_disruption_budget(docs):
    hpas, pdbs = of_kind(docs, "HorizontalPodAutoscaler"), of_kind(docs, "PodDisruptionBudget")
    scaled = of_kind(docs, "Deployment") | {"router": of_kind(docs, "StatefulSet")["router"]}
    for name, deployment in scaled.items():
        hpa = hpas[name]
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": deployment["kind"], "name": name}
        kinds = {m["type"] for m in hpa["spec"]["metrics"]}
        if name == "triton":
            assert kinds == {"Pods"}, "Triton scales on custom metrics, not CPU"
            assert "triton_queue_time_per_request_us" in {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
        else:
            assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
            assert hpa["spec"]["minReplicas"] >= 2, f"{name} needs two replicas to survive one pod's loss"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(pdbs[name]["spec"]["selector"]["matchLabels"], labels)


def test_services_select_pods_and_target_named_ports(docs):
    deployments = workloads(docs)
    for name, service in of_kind(docs, "Service").items():
        targets = [w for w in deployments.values()
                   if selects(service["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])]
        assert len(targets) == 1, name
        port_names = {p["name"] for p in container(targets[0])["ports"]}
        assert all(p["targetPort"] in port_names for p in service["spec"]["ports"]), name


def test_envoy_discovers_headless_services(docs):
    config = yaml.safe_load(next(iter(
        cm for name, cm in of_kind(docs, "ConfigMap").items() if name.startswith("envoy-config-")))["data"]["envoy.yaml"])
    services = of_kind(docs, "Service")
    upstreams = [c for c in config["static_resources"]["clusters"] if c["name"] != "envoy_admin"]
    assert {c["name"] for c in upstreams} == {"router", "guardrails", "retrieval", "generation", "authz", "ratelimit",
                                              "openai"}
    for cluster in upstreams:
        assert cluster["type"] == "STRICT_DNS" and cluster["lb_policy"] == "LEAST_REQUEST"
        (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        service = services[address["address"]]
        assert service["spec"]["clusterIP"] == "None", f"{address['address']} must be headless"
        assert address["port_value"] in {p["port"] for p in service["spec"]["ports"]}
        assert address["port_value"] == PYTHON_SERVICES[cluster["name"]][3]


def test_envoy_is_the_public_edge(docs):
    envoy = of_kind(docs, "Service")["envoy"]
    assert envoy["spec"]["type"] == "LoadBalancer" and envoy["spec"]["externalTrafficPolicy"] == "Local"
    assert [p["port"] for p in envoy["spec"]["ports"]] == [ENVOY_PORT]
    c = container(workloads(docs)["envoy"])
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "stats"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": ENVOY_PORT, "stats": ENVOY_STATS_PORT}
    mounted = {m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in workloads(docs)["envoy"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"].startswith("envoy-config-") and "config" in mounted


def test_authz_reads_keys_from_a_secret(docs):
    authz = workloads(docs)["authz"]
    c = container(authz)
    volumes = {v["name"]: v for v in authz["spec"]["template"]["spec"]["volumes"]}
    assert volumes["keys"]["secret"]["secretName"] == "gateway-keys"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "keys")
    assert env_of(c)["LLMSUITE_AUTHZ_KEYS_FILE"].startswith(mount["mountPath"] + "/") and mount["readOnly"]


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_the_settings_config_map_is_valid_for_each_service(docs, name):
    _, section, settings_cls, _, _ = PYTHON_SERVICES[name]
    config_map = next(cm for n, cm in of_kind(docs, "ConfigMap").items() if n.startswith("llmsuite-config-"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "llmsuite.yaml"
        path.write_text(config_map["data"]["llmsuite.yaml"])
        load(settings_cls, section, environ={"LLMSUITE_CONFIG": str(path)})


def test_state_is_reachable_only_by_its_users(docs):
    policies = of_kind(docs, "NetworkPolicy")
    assert policies["default-deny-ingress"]["spec"]["podSelector"] == {}
    triton = policies["triton-from-generation"]["spec"]["ingress"][0]
    assert triton["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "generation"}}}]
    assert triton["ports"] == [{"port": TRITON_PORTS["grpc"]}]


def test_overlays_pick_the_triton_hardware(overlay):
    name, docs = overlay
    triton = workloads(docs)["triton"]
    c = container(triton)
    requests, limits = c["resources"]["requests"], c["resources"]["limits"]
    if name == "cpu":
        assert c["image"] == "llmsuite/triton-cpu:0.1.0"
        assert all(GPU not in container(w)["resources"].get("requests", {}) for w in workloads(docs).values())
    else:
        assert c["image"] == "llmsuite/triton-trtllm:0.1.0"
        assert requests[GPU] == limits[GPU] == 1
        pod = triton["spec"]["template"]["spec"]
        assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/repository", "/engines", "/models"}
        claim = next(v for v in pod["volumes"] if v["name"] == "models")["persistentVolumeClaim"]["claimName"]
        assert claim in of_kind(docs, "PersistentVolumeClaim")
        metrics = {m["pods"]["metric"]["name"] for m in of_kind(docs, "HorizontalPodAutoscaler")["triton"]["spec"]["metrics"]}
        assert metrics == {"triton_queue_time_per_request_us", "triton_gpu_utilization"}
    assert {p["containerPort"] for p in c["ports"]} == set(TRITON_PORTS.values())


def test_adapter_rules_define_the_metrics_the_autoscalers_read():
    rules = yaml.safe_load((K8S / "prometheus-adapter-rules.yaml").read_text())["rules"]["custom"]
    assert {rule["name"]["as"] for rule in rules} == {"triton_queue_time_per_request_us", "triton_gpu_utilization"}


def _selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels and In/NotIn/Exists expressions) against labels."""
    if not selects(selector.get("matchLabels", {}), labels):
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        operator = expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and value is None:
            return False
    return True


def ingress_allowed(policies: list[dict], target: dict, port: int, source: dict) -> bool:
    """Whether NetworkPolicies let a pod labelled `source` (in the namespace) reach
    `port` of a pod labelled `target`."""
    selecting = [p for p in policies if "Ingress" in p["spec"]["policyTypes"]
                 and _selects(p["spec"]["podSelector"], target)]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            if ports and port not in ports:
                continue
            peers = rule.get("from")
            if not peers or any(("podSelector" in peer and _selects(peer["podSelector"], source))
                                or peer.get("namespaceSelector") == {} for peer in peers):
                return True
    return False


# Serving (and state) ports -> the workloads that may reach them; nobody else may.
MAY_REACH = {
    ("router", 50051): {"envoy", "worker", "openai"},  # jobs and the OpenAI API answer through the router
    ("authz", 50061): {"envoy"},
    ("ratelimit", 50062): {"envoy"},
    ("openai", 8090): {"envoy"},
    ("guardrails", 50052): {"envoy", "router"},
    ("retrieval", 50053): {"envoy", "router", "openai"},
    ("generation", 50054): {"envoy", "router"},
    ("triton", TRITON_PORTS["grpc"]): {"generation"},
    ("redis", 6379): {"authz", "ratelimit", "router", "worker"},
    ("qdrant", 6333): {"retrieval"},
}


def test_only_envoy_and_named_callers_reach_the_services_grpc_ports(docs):
    """The Kubernetes half of service-to-service trust: NetworkPolicies, evaluated for
    every workload's pods and for a pod of anything else started in the namespace."""
    policies = list(of_kind(docs, "NetworkPolicy").values())
    labels = {name: w["spec"]["template"]["metadata"]["labels"] for name, w in workloads(docs).items()}
    sources = {**labels, "intruder": {"app.kubernetes.io/name": "intruder"}}
    for (target, port), allowed in MAY_REACH.items():
        reaching = {name for name, source in sources.items() if ingress_allowed(policies, labels[target], port, source)}
        assert reaching == allowed, (target, port)
    # Everyone reaches the edge, and metrics stay scrapeable.
    assert all(ingress_allowed(policies, labels["envoy"], ENVOY_PORT, source) for source in sources.values())
    assert ingress_allowed(policies, labels["router"], PYTHON_SERVICES["router"][4], sources["intruder"])
