import pytest

from services.stack.stack import Ports, Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The whole suite as `make run` starts it, on free ports."""
    suite = Stack(ports=Ports.free(), var_dir=tmp_path_factory.mktemp("stack"))
    suite.start()
    yield suite
    suite.stop()


@pytest.fixture(scope="session")
def edge(stack) -> str:
    return f"127.0.0.1:{stack.ports.envoy}"
