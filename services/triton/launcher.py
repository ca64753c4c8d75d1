"""Command line and environment for the Triton server that nvidia-pytriton carries.

The wheel ships `tritonserver`, the Python backend and one backend stub per Python
version, but not laid out as Triton expects: the backend directory needs the
`python` backend folder with the stub for our Python next to it. prepare_backends()
builds that folder once under build/triton (per pytriton version), atomically, so
two processes starting Triton at once do not see a half-copied backend.
"""

import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from services.common.paths import REPO

# The real CPU models (SmolLM2-135M-Instruct on llama.cpp): what `make run` serves.
DEFAULT_MODEL_REPOSITORY = REPO / "models" / "cpu" / "llm"
# The deterministic stand-ins: tests that assert exact text, benchmarks of the suite's overhead.
STANDIN_MODEL_REPOSITORY = REPO / "models" / "cpu"
BUILD_DIR = REPO / "build" / "triton"


def site_packages() -> Path:
    """The site-packages folder that holds pytriton (the suite's environment)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise RuntimeError("nvidia-pytriton is not installed in this environment (run `make setup`)")
    return Path(spec.origin).resolve().parent.parent


def _pytriton_dir() -> Path:
    return site_packages() / "pytriton" / "tritonserver"


def prepare_backends(build_dir: Path = BUILD_DIR) -> Path:
    """Returns a backend directory holding the Python backend and its stub; idempotent."""
    version = importlib.metadata.version("nvidia-pytriton")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    backends = build_dir / f"pytriton-{version}-py{python}" / "backends"
    target = backends / "python"
    if target.is_dir():
        return backends
    source = _pytriton_dir()
    stub = source / "python_backend_stubs" / python / "triton_python_backend_stub"
    if not stub.is_file():
        raise RuntimeError(f"nvidia-pytriton {version} has no Python backend stub for Python {python} ({stub})")
    backends.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".python-", dir=backends))
    try:
        shutil.copytree(source / "backends" / "python", staging / "python",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, staging / "python" / stub.name)
        try:
            # rename is atomic; if another process got there first, its copy is as good.
            os.rename(staging / "python", target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return backends


def resolve_repository(path: Path) -> Path:
    """`path`, or its `repository/` folder when it has one.

    A model folder such as models/cpu/llm keeps the Triton repository next to code
    the models share (models/cpu/llm/llamacpp_model), which must stay out of the
    repository root: Triton takes every folder there for a model.
    """
    path = Path(path).resolve()
    nested = path / "repository"
    return nested if nested.is_dir() else path


def trace_arguments(otlp_http_url: str) -> list[str]:
    """Triton's OpenTelemetry mode: it traces only the requests whose stream headers carry a
    trace context (rate 0 samples no others; the generation service sends one only for
    requests the edge traces), timestamps only: tensors would put prompts in spans."""
    if not otlp_http_url:
        return []
    return ["--trace-config=mode=opentelemetry", "--trace-config=rate=0", "--trace-config=count=-1",
            "--trace-config=level=TIMESTAMPS", f"--trace-config=opentelemetry,url={otlp_http_url}",
            "--trace-config=opentelemetry,resource=service.name=triton",
            # Export within a second (default five): traces are read while the request is fresh.
            "--trace-config=opentelemetry,bsp_schedule_delay=1000"]


def triton_command(model_repository: Path, grpc_port: int, http_port: int, metrics_port: int, *,
                   host: str = "127.0.0.1", exit_timeout_s: int = 10,
                   log_verbose: int = 0, otlp_http_url: str = "") -> tuple[list[str], dict[str, str]]:
    """Returns (argv, extra environment) to run tritonserver on `model_repository`.

    `model_repository` may also be a folder holding one (models/cpu/llm); see
    resolve_repository().
    Every endpoint binds `host` (loopback by default: Triton has no authentication,
    so only the generation service should reach it). With `otlp_http_url`, Triton
    exports OpenTelemetry spans there (OTLP/HTTP, the only protocol it speaks).
    """
    site = site_packages()
    backends = prepare_backends()
    argv = [
        str(_pytriton_dir() / "bin" / "tritonserver"),
        f"--model-repository={resolve_repository(model_repository)}",
        f"--backend-directory={backends}",
        f"--grpc-address={host}",
        f"--grpc-port={grpc_port}",
        f"--http-address={host}",
        f"--http-port={http_port}",
        f"--metrics-address={host}",
        f"--metrics-port={metrics_port}",
        # Accept the keepalive pings the suite's clients send every 20 s on idle
        # connections (services/common/channels.py); Triton's defaults would
        # answer them with GOAWAY and drop the connection.
        "--grpc-keepalive-permit-without-calls=true",
        "--grpc-http2-min-recv-ping-interval-without-data=10000",
        "--grpc-http2-max-pings-without-data=0",
        "--allow-metrics=true",
        # No GPU here; without this Triton logs NVML/DCGM errors at start.
        "--allow-gpu-metrics=false",
        # Ready only when every model loaded, so health checks mean "can generate".
        "--strict-readiness=true",
        f"--exit-timeout-secs={exit_timeout_s}",
        f"--log-verbose={log_verbose}",
        *trace_arguments(otlp_http_url),
    ]
    libs = str(site / "nvidia_pytriton.libs")
    inherited = os.environ.get("LD_LIBRARY_PATH", "")
    env = {
        "LD_LIBRARY_PATH": f"{libs}:{inherited}" if inherited else libs,
        # Read by the models (models/cpu/llm/llamacpp_model/__init__.py, and the
        # stand-ins' models/cpu/standin/__init__.py): the stub's
        # interpreter does not apply PYTHONPATH itself.
        "PYTHONPATH": str(site),
    }
    return argv, env
