"""Child processes of the development stack and of the tests.

Every wait polls a real readiness signal (gRPC health, an HTTP endpoint) and fails
fast, with the log tail, when the process it waits for has died; nothing sleeps
to synchronise.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.paths import REPO

VENV_BIN = Path(sys.executable).parent


# Ports free_port has handed out in this process.
_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port() -> int:
    """A port nothing listens on now and that this process has not handed out before.

    Ports are chosen before the processes that bind them start, and the kernel may offer
    a port again as soon as its probe socket closes: a stack's authz and Envoy once got
    the same one, and Envoy could not start."""
    with _HANDED_OUT_LOCK:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


class ProcessDied(AssertionError):
    pass


class ServiceProcess:
    """One subprocess with its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None,
                 cwd: Path = REPO):
        self.name = name
        self.argv = argv
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.log_path = Path(log_dir) / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        # Held while starting or stopping, so a supervisor thread and its owner never
        # start one process twice.
        self.lock = threading.RLock()
        # True from stop() until the next start(): the process is down on purpose,
        # not crashed, and a supervisor leaves it alone.
        self.stopped = False

    def start(self) -> "ServiceProcess":
        with self.lock:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = self.log_path.open("ab")
            # A new session gives the process its own group, so stop() also ends any
            # children it started (Triton's Python-backend stubs).
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         cwd=self.cwd, start_new_session=True)
            log.close()
            self.stopped = False
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def crashed(self) -> bool:
        """Started, then exited without being asked to."""
        return self.proc is not None and not self.stopped and not self.alive()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def check_alive(self) -> None:
        if not self.alive():
            code = self.proc.returncode if self.proc else None
            raise ProcessDied(f"{self.name} exited with {code}; log tail:\n{self.log_tail()}")

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if ready():
                return
            time.sleep(0.05)  # poll interval, not synchronisation: ready() decides
        raise TimeoutError(f"{self.name}: {what} not reached in {timeout}s; log tail:\n{self.log_tail()}")

    def wait_grpc_healthy(self, port: int, service: str = "", timeout: float = 120.0,
                          credentials: grpc.ChannelCredentials | None = None) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        self.wait_until(lambda: grpc_health_status(port, service, credentials=credentials) == serving,
                        f"gRPC health SERVING on :{port}", timeout)

    def wait_http_ok(self, url: str, timeout: float = 120.0) -> None:
        self.wait_until(lambda: http_ok(url), f"HTTP 200 from {url}", timeout)

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        with self.lock:
            self.stopped = True
            if self.proc is None:
                return None
            if self.alive():
                self.signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.signal(signal.SIGKILL)
                    self.proc.wait(5)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers in the group
            except ProcessLookupError:
                pass
            return self.proc.returncode

    def __enter__(self) -> "ServiceProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def grpc_health_status(port: int, service: str = "", host: str = "127.0.0.1",
                       credentials: grpc.ChannelCredentials | None = None) -> int | None:
    """The health status on host:port (over TLS with `credentials`); None when it does not answer."""
    try:
        target = f"{host}:{port}"
        with (grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1).status
    except grpc.RpcError:
        return None


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
