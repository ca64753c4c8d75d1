"""Real Triton, generation and Redis for the router's integration tests, started once."""

import sys
from pathlib import Path

import pytest
import yaml

from services.router.config import PromptTemplate
from services.router.validation import Turn
from tests.harness import ServiceProcess, free_port, service_env
from tests.harness import start_redis
from tests.router.support import GARDEN, long_answer_request_id, model_prompt, prompt_tokens, start_router
from tests.stack_fixtures import start_generation

# The budget-stop test (test_operations_live.py): one light-model request whose day's
# spend budget has room for its prompt and STOP_TOKENS answer tokens (default prices:
# 150 and 600 nano-dollars a token), on a request id whose natural answer is longer.
STOP_QUESTION = "Which roses climb a trellis best?"
STOP_TOKENS = 10
STOP_REQUEST_ID = long_answer_request_id(PromptTemplate(), STOP_QUESTION, "light", 3 * STOP_TOKENS)
STOP_PROMPT_TOKENS = prompt_tokens(model_prompt(PromptTemplate(), [Turn("user", STOP_QUESTION)], STOP_REQUEST_ID))
STOP_BUDGET_USD = (STOP_PROMPT_TOKENS * 150 + STOP_TOKENS * 600) / 1e9
# Tokens per minute both Redis replicas share for the tenant `shared`.
SHARED_TOKENS_PER_MINUTE = 1500

# Tenants of the shared test routers; the budgeted ones each belong to one test.
TENANTS = {
    "default": {},
    "acme": {"template": "garden"},
    "globex": {"template": "garden"},
    "sampler": {"cache_sampled": True},
    "nocache": {"cache": False},
    "capped": {"budget": {"tokens_per_minute": 1}},
    "daycap": {"budget": {"usd_per_day": STOP_BUDGET_USD}},
    "shared": {"budget": {"tokens_per_minute": SHARED_TOKENS_PER_MINUTE}},
}
TEMPLATES = {"default": {}, "garden": GARDEN.model_dump()}


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("router-logs")


@pytest.fixture(scope="session")
def generation_port(log_dir, triton):
    generation, port = start_generation(log_dir, triton.grpc_port)
    yield port
    generation.stop()


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


# Guardrails policies for the router tests: tenant "strict" also blocks a word the
# stand-in models use, so an output block can be provoked deterministically.
GUARDRAILS_CONFIG = {
    "policies": {"default": {}, "strict": {"blocklist": ["deterministic"]}},
    "tenants": {"strict": {"policy": "strict"}},
}


@pytest.fixture(scope="session")
def side_services(log_dir, tmp_path_factory):
    """Guardrails and retrieval, started together (each loads models for ~15 s)."""
    data = tmp_path_factory.mktemp("side-services")
    config = data / "llmsuite.yaml"
    config.write_text(yaml.safe_dump({"guardrails": GUARDRAILS_CONFIG}))
    ports = {"guardrails": free_port(), "retrieval": free_port()}
    settings = {
        "guardrails": {"port": ports["guardrails"], "metrics_port": free_port(),
                       "blank_model_dir": str(data / "spacy-blank")},
        "retrieval": {"port": ports["retrieval"], "metrics_port": free_port(), "qdrant_path": str(data / "qdrant")},
    }
    processes = [ServiceProcess(name, [sys.executable, "-m", f"services.{name}"], log_dir,
                                env={**service_env(name, values), "LLMSUITE_CONFIG": str(config)})
                 for name, values in settings.items()]
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.wait_grpc_healthy(ports[process.name], timeout=120)
        yield ports
    finally:
        for process in processes:
            process.stop()
