"""The whole suite as the chaos and soak runs start it, and what its processes use.

What `make run` starts and supervises (services/stack: Triton, generation,
guardrails, retrieval, the router, authz, ratelimit, Envoy), on free ports, with the
CPU stand-in models, plus what a deployment with replicas has: two router replicas
behind Envoy and one Redis that the routers (cache, sessions), the rate limiter
(counters) and authz (revocations) share. The supervisor (services/stack/supervisor.py)
restarts whatever dies, Redis included; nothing here restarts anything by hand.
"""

import json
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Callable

import redis
import yaml
from grpc_health.v1 import health_pb2

from services.stack.processes import ServiceProcess, free_port, grpc_health_status, http_ok
from services.stack.stack import Ports, Stack
from services.stack.supervisor import Supervisor
from services.triton.launcher import STANDIN_MODEL_REPOSITORY

SERVING = health_pb2.HealthCheckResponse.SERVING


def readiness(stack: Stack) -> dict[str, Callable[[], bool]]:
    """Each process of `stack` by name, with the check that says it serves again."""
    p = stack.ports
    grpc_ports = {"generation": p.generation, "guardrails": p.guardrails, "retrieval": p.retrieval,
                  "authz": p.authz, "ratelimit": p.ratelimit, "envoy": p.envoy,
                  **{name: port for name, port, _ in p.routers()}}
    checks: dict[str, Callable[[], bool]] = {
        name: (lambda port=port: grpc_health_status(port) == SERVING) for name, port in grpc_ports.items()}
    checks["triton"] = lambda: http_ok(f"http://127.0.0.1:{p.triton_http}/v2/health/ready")
    return checks


def limits_config(path: Path) -> Path:
    """Rate limits far above the offered load: these runs measure faults, not the limiter."""
    path.write_text(yaml.safe_dump({"ratelimit": {"limits": [
        {"descriptor": "key", "requests_per_unit": 1_000_000, "unit": "minute"},
        {"descriptor": "tenant", "requests_per_unit": 1_000_000, "unit": "minute"},
        {"descriptor": "remote_address", "requests_per_unit": 1_000_000, "unit": "minute"},
    ]}}))
    return path


class Suite:
    """The supervised suite with router replicas and a shared Redis, in `var_dir`."""

    def __init__(self, var_dir: Path, routers: int = 2):
        self.var_dir = var_dir
        self.redis_port = redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        # No persistence: what Redis holds here (cache, counters) may be lost; the
        # revocations' durability is tested on its own (tests/gateway).
        self.redis = ServiceProcess("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                              "--save", "", "--appendonly", "no"], var_dir / "logs")
        shared = {"redis_url": self.redis_url}
        self.stack = Stack(ports=Ports.free(routers=routers), var_dir=var_dir,
                           model_repository=STANDIN_MODEL_REPOSITORY,
                           overrides={"router": shared, "ratelimit": shared, "authz": shared})
        self.reports: list[str] = []
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def edge(self) -> str:
        return f"127.0.0.1:{self.stack.ports.envoy}"

    @property
    def api_key(self) -> str:
        return self.stack.api_key

    @property
    def processes(self) -> dict[str, ServiceProcess]:
        return {"redis": self.redis, **self.stack.processes}

    def port_names(self) -> dict[int, str]:
        """Each listening port of the suite and the process it belongs to."""
        p = self.stack.ports
        names = {self.redis_port: "redis", p.envoy: "envoy",
                 p.envoy_admin: "envoy", p.triton_grpc: "triton", p.triton_http: "triton",
                 p.triton_metrics: "triton"}
        for name in ("generation", "guardrails", "retrieval", "authz", "ratelimit"):
            names[getattr(p, name)] = names[getattr(p, f"{name}_metrics")] = name
        for name, port, metrics in p.routers():
            names[port] = names[metrics] = name
        return names

    def ready(self) -> dict[str, Callable[[], bool]]:
        return {"redis": lambda: _redis_ping(self.redis_port), **readiness(self.stack)}

    def edge_failures(self) -> dict[str, int]:
        """Failed calls in Envoy's access log so far, by gRPC status, response flags
        (UAEX: refused by authz, UH: no healthy upstream, UC: upstream connection
        terminated, ...) and the process Envoy sent them to."""
        port_names = self.port_names()
        failures: Counter = Counter()
        for line in (self.var_dir / "logs" / "envoy.log").read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if str(entry.get("grpc_status")) in ("0", "-", "None") or entry["method"].startswith("/grpc.health"):
                continue
            upstream = str(entry.get("upstream") or "-")
            peer = port_names.get(int(upstream.rsplit(":", 1)[1]), upstream) if ":" in upstream else upstream
            failures[f"grpc {entry.get('grpc_status')} flags {entry.get('flags') or '-'} upstream {peer}"] += 1
        return dict(failures)

    def start(self, report: Callable[[str], None] = lambda _: None) -> "Suite":
        self.var_dir.mkdir(parents=True, exist_ok=True)
        os.environ["LLMSUITE_CONFIG"] = str(limits_config(self.var_dir / "limits.yaml"))
        self.redis.start()
        try:
            self.redis.wait_until(self.ready()["redis"], "redis PING", timeout=30)
            self.stack.start(report)
        except BaseException:
            self.redis.stop()
            raise
        supervisor = Supervisor(self.processes, self._report)
        self._supervisor = threading.Thread(target=supervisor.run, args=(self._stop,), name="supervisor",
                                            daemon=True)
        self._supervisor.start()
        return self

    def _report(self, line: str) -> None:
        self.reports.append(line)

    def stop(self) -> None:
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(10)
        self.stack.stop()
        self.redis.stop()


def _redis_ping(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def _tcp_sockets() -> dict[int, tuple[int, int, bool]]:
    """Every TCP socket of this machine by inode: local port, remote port, listening."""
    sockets = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            sockets[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state == "0A")
    return sockets


def _fd_kind(link: str, sockets: dict[int, tuple[int, int, bool]], port_names: dict[int, str]) -> str:
    """What an open descriptor is: a connection to a named process, one accepted, a listener, other."""
    if not link.startswith("socket:["):
        return "files, pipes and others"
    found = sockets.get(int(link[len("socket:["):-1]))
    if found is None:
        return "other sockets"
    local, remote, listening = found
    if listening:
        return "listening"
    if remote in port_names:
        return f"to {port_names[remote]}"
    return f"accepted on {port_names[local]}" if local in port_names else "other sockets"


def process_usage(pid: int, sockets: dict | None = None, port_names: dict[int, str] | None = None) -> dict:
    """Resident memory (KiB) and open file descriptors of one process, from /proc; with
    `sockets` (_tcp_sockets) and `port_names`, the descriptors by what they are too."""
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
    fds = os.listdir(f"/proc/{pid}/fd")
    result = {"rss_kib": rss_kib, "open_fds": len(fds)}
    if sockets is not None:
        kinds: Counter = Counter()
        for fd in fds:
            try:
                kinds[_fd_kind(os.readlink(f"/proc/{pid}/fd/{fd}"), sockets, port_names or {})] += 1
            except FileNotFoundError:
                continue  # closed meanwhile
        result["fds_by_kind"] = dict(sorted(kinds.items()))
    return result


def _children(pid: int) -> list[int]:
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        text = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        children += [int(child) for child in text]
    return children


def _child_name(pid: int) -> str:
    """A child's command; for a Triton Python-backend stub, with the model it serves
    (its second argument is <repository>/<model>/<version>/model.py)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    name = Path(argv[0]).name
    if len(argv) > 1 and argv[1].endswith("model.py"):
        name += f" ({Path(argv[1]).parent.parent.name})"
    return name


def usage(processes: dict[str, ServiceProcess], port_names: dict[int, str] | None = None) -> dict[str, dict]:
    """`process_usage` of every process, and of its children by command name
    (Triton's Python-backend stubs: `triton/triton_python_backend_stub (light)` ...);
    `port_names` (port -> process) names the peers of their connections."""
    sockets = _tcp_sockets()
    result: dict[str, dict] = {}
    for name, process in processes.items():
        if not process.alive():
            continue
        try:
            result[name] = process_usage(process.proc.pid, sockets, port_names)
            for child in _children(process.proc.pid):
                key = f"{name}/{_child_name(child)}"
                result[key if key not in result else f"{key} #{child}"] = process_usage(child, sockets, port_names)
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited between the checks
    return result
