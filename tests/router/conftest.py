"""Real Triton, generation and Redis for the router's integration tests, started once."""

from pathlib import Path

import pytest

from tests.router.support import GARDEN, start_redis, start_router
from tests.stack_fixtures import start_generation, start_triton

# Tenants of the shared test routers.
TENANTS = {
    "default": {},
    "acme": {"template": "garden"},
    "globex": {"template": "garden"},
    "sampler": {"cache_sampled": True},
    "nocache": {"cache": False},
}
TEMPLATES = {"default": {}, "garden": GARDEN.model_dump()}


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("router-logs")


@pytest.fixture(scope="session")
def generation_port(log_dir):
    triton, triton_port = start_triton(log_dir)
    try:
        generation, port = start_generation(log_dir, triton_port)
    except BaseException:
        triton.stop()
        raise
    yield port
    generation.stop()
    triton.stop()


@pytest.fixture(scope="session")
def redis_url(log_dir):
    process, url = start_redis(log_dir)
    yield url
    process.stop()


@pytest.fixture(scope="session")
def router(log_dir, generation_port):
    """A router with in-process cache and sessions."""
    instance = start_router(log_dir, "router-memory", {"templates": TEMPLATES, "tenants": TENANTS},
                            {"generation_url": f"127.0.0.1:{generation_port}"})
    yield instance
    instance.process.stop()


@pytest.fixture(scope="session")
def redis_routers(log_dir, generation_port, redis_url):
    """Two router replicas sharing one Redis."""
    replicas = []
    try:
        for name in ("router-redis-a", "router-redis-b"):
            replicas.append(start_router(log_dir, name, {"templates": TEMPLATES, "tenants": TENANTS},
                                         {"generation_url": f"127.0.0.1:{generation_port}"},
                                         env={"REDIS_URL": redis_url}))
        yield replicas
    finally:
        for replica in replicas:
            replica.process.stop()
