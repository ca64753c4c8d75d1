"""Real processes for the gateway tests: Redis, the authz and rate-limit services,
the echo upstream and Envoy, each on free ports and waited on by a readiness check."""

import sys
from pathlib import Path
from typing import Any

import yaml

from gateway.render import EnvoyParams, envoy_binary, render
from tests.harness import REPO, ServiceProcess, free_port, service_env


def start_gateway_service(module: str, settings: dict[str, Any], log_dir: Path, name: str,
                          config: dict[str, Any] | None = None) -> tuple[ServiceProcess, int]:
    """Starts `python -m gateway.<module>` (section = module) and waits for SERVING.

    Scalar settings travel as LLMSUITE_<SECTION>_<FIELD>; `config` (lists, maps)
    is written to a YAML file given as LLMSUITE_CONFIG.
    """
    settings = {"port": free_port(), "metrics_port": free_port(), **settings}
    env = service_env(module, settings)
    if config is not None:
        path = Path(log_dir) / f"{name}.config.yaml"
        path.write_text(yaml.safe_dump({module: config}))
        env["LLMSUITE_CONFIG"] = str(path)
    process = ServiceProcess(name, [sys.executable, "-m", f"gateway.{module}"], log_dir, env=env)
    process.start()
    try:
        process.wait_grpc_healthy(settings["port"], timeout=60)
    except BaseException:
        process.stop()
        raise
    return process, settings["port"]


def start_upstream(log_dir: Path, name: str) -> tuple[ServiceProcess, int]:
    """The echo InferenceService (tests/gateway/upstream.py) on a free port."""
    port = free_port()
    process = ServiceProcess(name, [sys.executable, "-m", "tests.gateway.upstream"], log_dir,
                             env=service_env("upstream", {"port": port, "metrics_port": free_port(),
                                                          "replica": name}))
    process.start()
    try:
        process.wait_grpc_healthy(port, timeout=60)
    except BaseException:
        process.stop()
        raise
    return process, port


def descriptor_set(out_dir: Path) -> Path:
    """The protos' descriptor set, built from protos/ so it always matches them, with
    google.rpc.Status and its details as `make proto` builds it."""
    import google.rpc
    from grpc_tools import protoc

    out = Path(out_dir) / "llmsuite.pb"
    protos = sorted(str(p.relative_to(REPO / "protos")) for p in (REPO / "protos").rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    googleapis = Path(next(iter(google.rpc.__path__))).parent.parent
    code = protoc.main(["protoc", f"-I{REPO / 'protos'}", f"-I{include}", f"-I{googleapis}", "--include_imports",
                        f"--descriptor_set_out={out}", *protos,
                        "google/rpc/status.proto", "google/rpc/error_details.proto"])
    assert code == 0, "protoc failed to build the descriptor set"
    return out


def start_envoy(params: EnvoyParams, log_dir: Path, name: str = "envoy") -> ServiceProcess:
    """Envoy on `params`; ready once gRPC health through its listener says SERVING
    (which needs a healthy upstream, and authz when edge security is on)."""
    config = Path(log_dir) / f"{name}.yaml"
    config.write_text(render(params))
    # Hot restart off: several Envoys (other tests, a running stack) share the machine.
    # Access log lines are flushed every 250 ms instead of 10 s, for the tests that read them.
    process = ServiceProcess(name, [str(envoy_binary()), "-c", str(config), "--log-level", "warn",
                                    "--disable-hot-restart", "--file-flush-interval-msec", "250"], log_dir)
    process.start()
    try:
        process.wait_grpc_healthy(params.listen_port, timeout=60)
    except BaseException:
        process.stop()
        raise
    return process


def placeholder_upstreams() -> dict[str, list[str]]:
    """Addresses for the clusters a test does not use: nothing listens there."""
    return {name: [f"127.0.0.1:{free_port()}"] for name in ("router", "guardrails", "retrieval", "generation")}
