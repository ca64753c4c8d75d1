import collections

import grpc
import pytest

from services.stack.stack import Ports, Stack
from tests.stack_fixtures import CPU_MODEL_REPOSITORY


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The whole suite as `make run` starts it (secured edge included), on free ports, with the stand-ins."""
    suite = Stack(ports=Ports.free(), var_dir=tmp_path_factory.mktemp("stack"),
                  model_repository=CPU_MODEL_REPOSITORY, overrides={"router": {"canary_key": "e2e-canary-key"}})
    suite.start()
    yield suite
    suite.stop()


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
