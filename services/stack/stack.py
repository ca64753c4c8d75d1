"""The whole suite as local processes: what `make run` starts, and what the
end-to-end tests start on free ports.

Each component is a real process (Triton, the Python services, Envoy) started in
dependency order; the next starts only when the previous reports ready. Stopping
goes in reverse order with SIGTERM, so every service drains gracefully.
"""

import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import yaml

from gateway.keys import ensure_dev_key
from gateway.render import EdgeSecurity, EnvoyParams, Tracing, envoy_binary, render
from services.common.config import CONFIG_ENV, load
from services.common.paths import REPO
from services.common.tracing import SECTION as TRACING, TracingSettings
from services.stack import prometheus
from services.stack.processes import ServiceProcess, free_port
from services.triton.config import TritonSettings


def configured_model_repository() -> Path:
    """Triton's repository as `python -m services.triton` would pick it (setting `triton.model_repository`)."""
    return Path(load(TritonSettings, "triton").model_repository)


@dataclass
class Ports:
    """Every port the stack listens on; the defaults are the documented ones."""

    envoy: int = 8080
    envoy_admin: int = 9901
    router: int = 50051
    router_metrics: int = 9101
    guardrails: int = 50052
    guardrails_metrics: int = 9102
    retrieval: int = 50053
    retrieval_metrics: int = 9103
    generation: int = 50054
    generation_metrics: int = 9104
    worker: int = 50055
    worker_metrics: int = 9105
    triton_grpc: int = 8001
    triton_http: int = 8000
    triton_metrics: int = 8002
    openai: int = 8090
    openai_metrics: int = 9106
    authz: int = 50061
    authz_metrics: int = 9161
    ratelimit: int = 50062
    ratelimit_metrics: int = 9162
    # Prometheus, when the stack runs observed (`make run-observed`).
    prometheus: int = 9090
    # (gRPC, metrics) ports of further router replicas, beyond `router` and `router_metrics`;
    # replicas share cache and sessions only through Redis (overrides: router.redis_url).
    router_replicas: tuple[tuple[int, int], ...] = ()

    @classmethod
    def free(cls, routers: int = 1) -> "Ports":
        """Free ports for every component (tests run beside a running stack), `routers` router replicas."""
        single = {f.name: free_port() for f in fields(cls) if f.name != "router_replicas"}
        return cls(**single, router_replicas=tuple((free_port(), free_port()) for _ in range(routers - 1)))

    def routers(self) -> list[tuple[str, int, int]]:
        """Each router replica's process name, gRPC port and metrics port: `router`, `router-2`, ..."""
        replicas = [(self.router, self.router_metrics), *self.router_replicas]
        return [("router" if n == 1 else f"router-{n}", port, metrics)
                for n, (port, metrics) in enumerate(replicas, start=1)]


@dataclass
class Component:
    name: str
    argv: list[str]
    env: dict[str, str]
    wait: Callable[[ServiceProcess], None]


def _python(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def _settings_env(section: str, **settings) -> dict[str, str]:
    return {f"LLMSUITE_{section.upper()}_{key.upper()}": str(value) for key, value in settings.items()}


@dataclass
class Stack:
    ports: Ports = field(default_factory=Ports)
    var_dir: Path = REPO / "var"
    listen_host: str = "127.0.0.1"
    # The real CPU models unless LLMSUITE_TRITON_MODEL_REPOSITORY (or the YAML's
    # triton section) says otherwise; tests that assert stand-in text pass the stand-ins.
    model_repository: Path = field(default_factory=configured_model_repository)
    # Extra settings per section (tests tighten limits, set keys, ...).
    overrides: dict[str, dict] = field(default_factory=dict)
    # Settings sections written to one YAML file that every component reads
    # ($LLMSUITE_CONFIG): lists and maps, which environment variables cannot carry.
    # Empty: the components inherit this process's $LLMSUITE_CONFIG, if any.
    config: dict[str, dict] = field(default_factory=dict)
    # Where traces go (tests); None: the `tracing` section as the components read it
    # (LLMSUITE_TRACING_* in this process's environment, or the YAML), by default off.
    tracing: TracingSettings | None = None
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    # The development API key (created on first start, kept under var/gateway).
    api_key: str = ""
    # Start Prometheus last, scraping every process at this interval with the suite's
    # alert rules (services/stack/prometheus.py); None: no Prometheus.
    scrape_interval_s: float | None = None

    def _env(self, section: str, **settings) -> dict[str, str]:
        env = _settings_env(section, **{**settings, **self.overrides.get(section, {})})
        if self.tracing is not None:
            env.update(_settings_env(TRACING, **self.tracing.model_dump()))
        if self.config:
            env[CONFIG_ENV] = str(self.var_dir / "llmsuite.yaml")
        return env

    def tracing_settings(self) -> TracingSettings:
        """The stack's tracing, as every component sees it (Envoy's and Triton's flags come from it)."""
        if self.tracing is not None:
            return self.tracing
        environ = dict(os.environ)
        if self.config:
            environ[CONFIG_ENV] = str(self.var_dir / "llmsuite.yaml")
        return load(TracingSettings, TRACING, environ=environ)

    def redis_url(self) -> str:
        """The router's Redis ($REDIS_URL or a router override); empty: state and jobs stay in the router."""
        return str(self.overrides.get("router", {}).get("redis_url") or os.environ.get("REDIS_URL", ""))

    def _workers(self, grpc_ready) -> list[Component]:
        """Batch-job workers: with Redis, one beside the router; without, the router runs jobs itself."""
        if not self.redis_url():
            return []
        p = self.ports
        return [Component("worker", _python("services.worker"),
                          self._env("worker", port=p.worker, metrics_port=p.worker_metrics,
                                    router_url=f"127.0.0.1:{p.router}", redis_url=self.redis_url()),
                          grpc_ready(p.worker, 60))]

    def _prometheus(self) -> list[Component]:
        if self.scrape_interval_s is None:
            return []
        p = self.ports
        path = prometheus.write_config(self.var_dir / "prometheus.yml",
                                       prometheus.scrape_targets(p, workers=bool(self.redis_url())),
                                       self.scrape_interval_s)
        return [Component("prometheus", prometheus.command(path, self.var_dir / "prometheus", p.prometheus), {},
                          lambda proc: proc.wait_http_ok(f"http://127.0.0.1:{p.prometheus}/-/ready", timeout=60))]

    def components(self) -> list[Component]:
        from services.triton.launcher import triton_command

        p = self.ports
        if self.config:
            self.var_dir.mkdir(parents=True, exist_ok=True)
            (self.var_dir / "llmsuite.yaml").write_text(yaml.safe_dump(self.config))
        tracing = self.tracing_settings()
        triton_argv, triton_env = triton_command(self.model_repository, p.triton_grpc, p.triton_http, p.triton_metrics,
                                                 otlp_http_url=tracing.otlp_http_url if tracing.enabled else "")
        gateway_dir = self.var_dir / "gateway"
        keys_file = gateway_dir / "keys.yaml"
        self.api_key = ensure_dev_key(keys_file, gateway_dir / "dev-key")
        envoy_config = self.var_dir / "envoy.yaml"
        envoy_config.write_text(render(EnvoyParams(
            listen_host=self.listen_host, listen_port=p.envoy, admin_port=p.envoy_admin,
            upstreams={
                "router": [f"127.0.0.1:{port}" for _, port, _ in p.routers()],
                "generation": [f"127.0.0.1:{p.generation}"],
                "guardrails": [f"127.0.0.1:{p.guardrails}"],
                "retrieval": [f"127.0.0.1:{p.retrieval}"],
                "openai": [f"127.0.0.1:{p.openai}"],
            },
            security=EdgeSecurity(authz=[f"127.0.0.1:{p.authz}"], ratelimit=[f"127.0.0.1:{p.ratelimit}"]),
            descriptor_set=str(REPO / "gen" / "llmsuite.pb"),
            tracing=Tracing(tracing.otlp_endpoint, tracing.sample_percent) if tracing.enabled else None,
        )))

        def grpc_ready(port: int, timeout: float = 180):
            return lambda proc: proc.wait_grpc_healthy(port, timeout=timeout)

        return [
            Component("triton", triton_argv, triton_env,
                      lambda proc: proc.wait_http_ok(f"http://127.0.0.1:{p.triton_http}/v2/health/ready", timeout=180)),
            Component("generation", _python("services.generation"),
                      self._env("generation", port=p.generation, metrics_port=p.generation_metrics,
                                triton_url=f"127.0.0.1:{p.triton_grpc}"),
                      grpc_ready(p.generation)),
            Component("guardrails", _python("services.guardrails"),
                      self._env("guardrails", port=p.guardrails, metrics_port=p.guardrails_metrics),
                      grpc_ready(p.guardrails)),
            Component("retrieval", _python("services.retrieval"),
                      self._env("retrieval", port=p.retrieval, metrics_port=p.retrieval_metrics,
                                qdrant_path=self.var_dir / "qdrant"),
                      grpc_ready(p.retrieval)),
            # Each replica keeps its own audit log: a log has one writer.
            *(Component(name, _python("services.router"),
                        self._env("router", port=port, metrics_port=metrics,
                                  generation_url=f"127.0.0.1:{p.generation}",
                                  guardrails_url=f"127.0.0.1:{p.guardrails}",
                                  retrieval_url=f"127.0.0.1:{p.retrieval}",
                                  audit_dir=self.var_dir / "audit" / name),
                        grpc_ready(port, 60))
              for name, port, metrics in p.routers()),
            *self._workers(grpc_ready),
            Component("openai", _python("services.openai"),
                      self._env("openai", port=p.openai, metrics_port=p.openai_metrics,
                                router_url=f"127.0.0.1:{p.router}", retrieval_url=f"127.0.0.1:{p.retrieval}"),
                      lambda proc: proc.wait_http_ok(f"http://127.0.0.1:{p.openai}/healthz", timeout=60)),
            Component("authz", _python("gateway.authz"),
                      self._env("authz", port=p.authz, metrics_port=p.authz_metrics, keys_file=keys_file),
                      grpc_ready(p.authz, 60)),
            Component("ratelimit", _python("gateway.ratelimit"),
                      self._env("ratelimit", port=p.ratelimit, metrics_port=p.ratelimit_metrics),
                      grpc_ready(p.ratelimit, 60)),
            # Hot restart is off: it needs a shared-memory region per machine, so two
            # Envoys (a running stack and the tests) would collide.
            Component("envoy", [str(envoy_binary()), "-c", str(envoy_config), "--log-level", "warn",
                                "--disable-hot-restart"], {},
                      lambda proc: proc.wait_grpc_healthy(p.envoy, timeout=60)),
            *self._prometheus(),
        ]

    def start(self, report: Callable[[str], None] = lambda _: None) -> "Stack":
        log_dir = self.var_dir / "logs"
        try:
            for component in self.components():
                process = ServiceProcess(component.name, component.argv, log_dir, env=component.env)
                self.processes[component.name] = process
                process.start()
                report(f"started {component.name}, waiting until it is ready (log: {process.log_path})")
                component.wait(process)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()
        self.processes.clear()

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
