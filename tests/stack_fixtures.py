"""Start Triton (CPU stand-ins unless told otherwise) and the generation service for integration tests.

Shared by tests/generation and the end-to-end tests: real processes on free ports,
ready only when their health says so.
"""

import sys
from pathlib import Path
from typing import Any

from services.triton.launcher import DEFAULT_MODEL_REPOSITORY, STANDIN_MODEL_REPOSITORY
from tests.harness import ServiceProcess, free_port, service_env, start_service

# The stand-ins: the tests that know a model's exact answer run on them.
CPU_MODEL_REPOSITORY = STANDIN_MODEL_REPOSITORY
# The real models (SmolLM2-135M-Instruct on llama.cpp), as `make run` serves them.
LLM_MODEL_REPOSITORY = DEFAULT_MODEL_REPOSITORY


class TritonProcess(ServiceProcess):
    """`python -m services.triton` (it execs tritonserver) with the ports it listens on."""

    def __init__(self, log_dir: Path, grpc_port: int, http_port: int, metrics_port: int,
                 model_repository: Path = CPU_MODEL_REPOSITORY, name: str = "triton"):
        self.grpc_port, self.http_port, self.metrics_port = grpc_port, http_port, metrics_port
        settings = {"grpc_port": grpc_port, "http_port": http_port, "metrics_port": metrics_port,
                    "model_repository": model_repository}
        super().__init__(name, [sys.executable, "-m", "services.triton"], log_dir,
                         env=service_env("triton", settings))

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def wait_ready(self, timeout: float = 120.0) -> None:
        self.wait_http_ok(f"{self.http_url}/v2/health/ready", timeout)


def start_triton(log_dir: Path, *, grpc_port: int | None = None, http_port: int | None = None,
                 metrics_port: int | None = None, model_repository: Path = CPU_MODEL_REPOSITORY,
                 name: str = "triton") -> tuple[TritonProcess, int]:
    """Starts Triton on the CPU stand-ins and waits until it is ready.

    Returns (process, grpc_port); `process.http_port` and `process.metrics_port`
    hold the other ports. Passing the ports of a stopped Triton restarts it there.
    """
    process = TritonProcess(log_dir, grpc_port or free_port(), http_port or free_port(),
                            metrics_port or free_port(), model_repository, name)
    process.start()
    try:
        process.wait_ready()
    except BaseException:
        process.stop()
        raise
    return process, process.grpc_port


def start_generation(log_dir: Path, triton_grpc_port: int, settings: dict[str, Any] | None = None,
                     name: str = "generation") -> tuple[ServiceProcess, int]:
    """Starts the generation service against Triton and waits for SERVING (after warm-up).

    Returns (process, grpc_port).
    """
    values = {"triton_url": f"127.0.0.1:{triton_grpc_port}", **(settings or {})}
    return start_service("generation", "generation", values, log_dir, name=name)
