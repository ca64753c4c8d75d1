"""Real processes for tests: free ports, start, wait on health, always clean up.

The process machinery is shared with the development stack (services/stack);
this module adds what only tests need.
"""

import sys
import time
from pathlib import Path
from typing import Any

import grpc
import redis

from services.common.paths import REPO  # noqa: F401  (re-exported for tests)
from services.stack.processes import (  # noqa: F401  (re-exported for tests)
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


def poll(condition, what: str, timeout: float = 10.0):
    """Polls `condition()` until it returns a truthy value, which it returns."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)  # poll interval; the condition decides
    raise AssertionError(f"{what} not reached within {timeout}s")


def redis_ping(port: int) -> bool:
    try:
        return redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        return False


def start_redis(log_dir: Path, name: str = "redis", port: int | None = None) -> tuple[ServiceProcess, str]:
    """A throwaway redis-server (no persistence); returns (process, url) once it answers PING."""
    port = port or free_port()
    process = ServiceProcess(name, ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                    "--save", "", "--appendonly", "no"], log_dir)
    process.start()
    try:
        process.wait_until(lambda: redis_ping(port), f"redis PING on :{port}", timeout=30)
    except BaseException:
        process.stop()
        raise
    return process, f"redis://127.0.0.1:{port}/0"
