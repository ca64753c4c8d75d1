import collections
import threading

import grpc
import pytest

from gateway.ratelimit.config import DEFAULT_LIMITS
from services.stack.stack import Ports, Stack
from services.stack.supervisor import Supervisor
from tests.stack_fixtures import CPU_MODEL_REPOSITORY

# A key id with a tiny request limit, for the tests of rate-limit answers; every
# other key keeps the default limits.
LIMITED_KEY_ID = "limited"
LIMITED_PER_MINUTE = 3
# A tenant that may send its own system messages (the default tenant may not).
SYSTEM_PROMPT_TENANT = "lab"
E2E_CONFIG = {
    "ratelimit": {"limits": [
        {**limit.model_dump(), "overrides": {LIMITED_KEY_ID: LIMITED_PER_MINUTE}} if limit.descriptor == "key"
        else limit.model_dump() for limit in DEFAULT_LIMITS]},
    "router": {"tenants": {"default": {}, SYSTEM_PROMPT_TENANT: {"allow_client_system_prompt": True}}},
}


@pytest.fixture(scope="session")
def supervised(tmp_path_factory):
    """The whole suite as `make run` starts and supervises it (secured edge included),
    on free ports, with the stand-ins; yields the stack and the supervisor's reports."""
    suite = Stack(ports=Ports.free(), var_dir=tmp_path_factory.mktemp("stack"),
                  model_repository=CPU_MODEL_REPOSITORY, overrides={"router": {"canary_key": "e2e-canary-key"}},
                  config=E2E_CONFIG)
    suite.start()
    reports: list[str] = []
    stop = threading.Event()
    supervisor = threading.Thread(target=Supervisor(suite.processes, reports.append).run, args=(stop,),
                                  name="supervisor", daemon=True)
    supervisor.start()
    try:
        yield suite, reports
    finally:
        stop.set()
        supervisor.join(10)
        suite.stop()


@pytest.fixture(scope="session")
def stack(supervised) -> Stack:
    return supervised[0]


@pytest.fixture(scope="session")
def supervisor_reports(supervised) -> list[str]:
    return supervised[1]


@pytest.fixture(scope="session")
def edge(stack) -> str:
    return f"127.0.0.1:{stack.ports.envoy}"


@pytest.fixture(scope="session")
def auth(stack) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {stack.api_key}"),)


class _ClientCallDetails(collections.namedtuple(
        "_ClientCallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
        grpc.ClientCallDetails):
    pass


class _AddMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the API key to every call, as a client application would."""

    def __init__(self, pairs):
        self._pairs = tuple(pairs)

    def _details(self, details):
        return _ClientCallDetails(details.method, details.timeout, (*(details.metadata or ()), *self._pairs),
                                  details.credentials, details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)


@pytest.fixture(scope="session")
def edge_channel(edge, auth):
    """A channel to the edge that sends the development API key."""
    with grpc.insecure_channel(edge) as channel:
        yield grpc.intercept_channel(channel, _AddMetadata(auth))
