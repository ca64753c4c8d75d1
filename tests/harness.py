"""Real processes for tests: free ports, start, wait on health, always clean up.

The process machinery is shared with the development stack (services/stack);
this module adds what only tests need.
"""

import sys
from pathlib import Path
from typing import Any

import grpc

from services.stack.processes import (  # noqa: F401  (re-exported for tests)
    REPO,
    ProcessDied,
    ServiceProcess,
    free_port,
    grpc_health_status,
    http_ok,
)

def service_env(section: str, settings: dict[str, Any]) -> dict[str, str]:
    """Environment that sets `settings` on a service through LLMSUITE_<SECTION>_<FIELD>."""
    return {f"LLMSUITE_{section.upper()}_{key.upper()}": str(value) for key, value in settings.items()}


def start_service(module: str, section: str, settings: dict[str, Any], log_dir: Path,
                  env: dict[str, str] | None = None, timeout: float = 180.0,
                  name: str | None = None) -> tuple[ServiceProcess, int]:
    """Starts `python -m services.<module>` on a free port and waits for SERVING.

    `settings` become LLMSUITE_<SECTION>_<FIELD> variables; `port` and
    `metrics_port` are chosen here unless given. Returns (process, port).
    """
    settings = dict(settings)
    settings.setdefault("port", free_port())
    settings.setdefault("metrics_port", free_port())
    process = ServiceProcess(name or module, [sys.executable, "-m", f"services.{module}"], log_dir,
                             env={**service_env(section, settings), **(env or {})})
    process.start()
    try:
        process.wait_grpc_healthy(int(settings["port"]), timeout=timeout)
    except BaseException:
        process.stop()
        raise
    return process, int(settings["port"])


def assert_grpc_error(err: grpc.RpcError, code: grpc.StatusCode, *fragments: str) -> None:
    """Asserts an RpcError's code and that its message contains each fragment."""
    assert err.code() == code, f"expected {code.name}, got {err.code().name}: {err.details()}"
    for fragment in fragments:
        assert fragment.lower() in (err.details() or "").lower(), f"{fragment!r} not in {err.details()!r}"
