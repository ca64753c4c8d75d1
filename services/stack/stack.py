"""The whole suite as local processes: what `make run` starts, and what the
end-to-end tests start on free ports.

Each component is a real process (Triton, the Python services, Envoy) started in
dependency order; the next starts only when the previous reports ready. Stopping
goes in reverse order with SIGTERM, so every service drains gracefully.
"""

import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from gateway.render import EnvoyParams, envoy_binary, render
from services.stack.processes import REPO, ServiceProcess, free_port


@dataclass
class Ports:
    """Every port the stack listens on; the defaults are the documented ones."""

    envoy: int = 8080
    envoy_admin: int = 9901
    router: int = 50051
    router_metrics: int = 9101
    generation: int = 50054
    generation_metrics: int = 9104
    triton_grpc: int = 8001
    triton_http: int = 8000
    triton_metrics: int = 8002

    @classmethod
    def free(cls) -> "Ports":
        """Free ports for every component (tests run beside a running stack)."""
        return cls(**{f.name: free_port() for f in fields(cls)})


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
    model_repository: Path = REPO / "models" / "cpu"
    processes: dict[str, ServiceProcess] = field(default_factory=dict)

    def components(self) -> list[Component]:
        from services.triton.launcher import triton_command

        p = self.ports
        triton_argv, triton_env = triton_command(self.model_repository, p.triton_grpc, p.triton_http, p.triton_metrics)
        envoy_config = self.var_dir / "envoy.yaml"
        envoy_config.parent.mkdir(parents=True, exist_ok=True)
        envoy_config.write_text(render(EnvoyParams(
            listen_host=self.listen_host, listen_port=p.envoy, admin_port=p.envoy_admin,
            upstreams={
                "router": [f"127.0.0.1:{p.router}"],
                "generation": [f"127.0.0.1:{p.generation}"],
                # Placeholders until these services join the stack: Envoy's health
                # checks keep them out of rotation, so calls get UNAVAILABLE.
                "guardrails": [f"127.0.0.1:{free_port()}"],
                "retrieval": [f"127.0.0.1:{free_port()}"],
            },
        )))
        return [
            Component("triton", triton_argv, triton_env,
                      lambda proc: proc.wait_http_ok(f"http://127.0.0.1:{p.triton_http}/v2/health/ready", timeout=180)),
            Component("generation", _python("services.generation"),
                      _settings_env("generation", port=p.generation, metrics_port=p.generation_metrics,
                                    triton_url=f"127.0.0.1:{p.triton_grpc}"),
                      lambda proc: proc.wait_grpc_healthy(p.generation, timeout=180)),
            Component("router", _python("services.router"),
                      _settings_env("router", port=p.router, metrics_port=p.router_metrics,
                                    generation_url=f"127.0.0.1:{p.generation}"),
                      lambda proc: proc.wait_grpc_healthy(p.router, timeout=60)),
            Component("envoy", [str(envoy_binary()), "-c", str(envoy_config), "--log-level", "warn"], {},
                      lambda proc: proc.wait_grpc_healthy(p.envoy, timeout=60)),
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
