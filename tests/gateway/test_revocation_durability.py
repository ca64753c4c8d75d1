"""Revocations survive a Redis restart: authz writes the revocations it knows back to
a Redis that lost them, and the deployments run Redis with an append-only file, so
a restarted Redis still holds the set. Real redis-server and authz processes."""

import shutil
import time

import pytest
import redis
import yaml

from gateway.keys import add_key, revoke_key
from tests.gateway.procs import start_gateway_service
from tests.gateway.test_authz_service import INFER, check
from tests.harness import REPO, ServiceProcess, free_port, redis_ping, start_redis

REVOCATION_SET = "llmsuite:revoked-keys"


def refused_as_revoked(port: int, key: str) -> bool:
    return "revoked" in check(port, INFER, {"x-api-key": key}).denied_response.body


def wait_until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"


@pytest.mark.integration
def test_a_redis_restart_without_persistence_brings_no_revoked_key_back(tmp_path):
    keys_file = tmp_path / "keys.yaml"
    keys = {name: add_key(keys_file, name, "acme", ["inference"]) for name in ("in-file", "in-redis", "stays")}
    revoke_key(keys_file, "in-file")
    redis_process, url = start_redis(tmp_path, "redis-first")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    started = [redis_process]
    try:
        authz, authz_port = start_gateway_service("authz", {"keys_file": keys_file, "redis_url": url}, tmp_path,
                                                  "authz-a")
        started.append(authz)
        redis.Redis.from_url(url).sadd(REVOCATION_SET, "in-redis")
        wait_until(lambda: refused_as_revoked(authz_port, keys["in-redis"]), "authz sees the Redis revocation")

        redis_process.stop()
        # Down, then back empty on the same port: every check in between and after refuses.
        redis_process, _ = start_redis(tmp_path, "redis-again", port=port)
        started.append(redis_process)
        client = redis.Redis.from_url(url)
        assert client.smembers(REVOCATION_SET) == set(), "the new Redis starts empty"
        deadline = time.monotonic() + 10
        while client.smembers(REVOCATION_SET) != {b"in-file", b"in-redis"}:
            assert time.monotonic() < deadline, "authz did not write the revocations back"
            for name in ("in-file", "in-redis"):
                assert refused_as_revoked(authz_port, keys[name]), f"{name} was accepted after Redis restarted"
        assert check(authz_port, INFER, {"x-api-key": keys["stays"]}).status.code == 0

        # A replica started now learns both from Redis; its keys file says nothing of in-redis.
        later, later_port = start_gateway_service("authz", {"keys_file": keys_file, "redis_url": url}, tmp_path,
                                                  "authz-later")
        started.append(later)
        assert refused_as_revoked(later_port, keys["in-redis"]) and refused_as_revoked(later_port, keys["in-file"])
    finally:
        for process in reversed(started):
            process.stop()


def compose_redis_args() -> list[str]:
    compose = yaml.safe_load((REPO / "compose" / "docker-compose.yml").read_text())
    return compose["services"]["redis"]["command"][1:]


def kubernetes_redis_args() -> list[str]:
    documents = yaml.safe_load_all((REPO / "deploy" / "k8s" / "base" / "redis" / "statefulset.yaml").read_text())
    statefulset = next(doc for doc in documents if doc["kind"] == "StatefulSet")
    return statefulset["spec"]["template"]["spec"]["containers"][0]["args"][1:]


def persistence_args(args: list[str]) -> dict[str, str]:
    """The persistence settings of a redis-server command line (--name value pairs)."""
    pairs = dict(zip(args[::2], args[1::2]))
    return {name: value for name, value in pairs.items() if name in ("--dir", "--appendonly", "--appendfsync", "--save")}


def test_compose_and_kubernetes_run_redis_with_the_same_append_only_file():
    compose, kubernetes = persistence_args(compose_redis_args()), persistence_args(kubernetes_redis_args())
    assert compose == kubernetes
    assert compose["--appendonly"] == "yes" and compose["--dir"] == "/data"


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_the_deployments_redis_keeps_revocations_across_a_kill(tmp_path):
    """redis-server with the deployments' persistence settings (its data folder moved
    here) keeps a revocation through SIGKILL and a restart."""
    settings = persistence_args(compose_redis_args()) | {"--dir": str(tmp_path / "data")}
    (tmp_path / "data").mkdir()
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
            *[item for pair in settings.items() for item in pair]]

    def start(name: str) -> ServiceProcess:
        process = ServiceProcess(name, argv, tmp_path).start()
        process.wait_until(lambda: redis_ping(port), f"redis PING on :{port}", timeout=30)
        return process

    process = start("redis-aof")
    try:
        client = redis.Redis(port=port)
        client.sadd(REVOCATION_SET, "gone-for-good")
        # appendfsync everysec: wait until the write is in the file, then kill without warning.
        aof = tmp_path / "data"
        wait_until(lambda: any(b"gone-for-good" in f.read_bytes() for f in aof.rglob("*") if f.is_file()),
                   "the revocation written to the append-only file")
        process.signal(9)
        process.proc.wait(10)
        process = start("redis-aof-again")
        assert redis.Redis(port=port).smembers(REVOCATION_SET) == {b"gone-for-good"}
    finally:
        process.stop()
