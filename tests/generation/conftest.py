"""One real Triton (CPU stand-ins) and one generation service for the whole session."""

import sys
from pathlib import Path

import grpc
import pytest
from llmsuite.generation.v1 import generation_pb2_grpc

from tests.generation.support import MAX_PROMPT_CHARS
from tests.harness import REPO, free_port
from tests.stack_fixtures import start_generation

# The stand-ins' text generator, to know the exact answer a model must return.
sys.path.insert(0, str(REPO / "models" / "cpu"))


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("generation-logs")


@pytest.fixture(scope="session")
def generation_metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def generation_port(log_dir, triton, generation_metrics_port) -> int:
    process, port = start_generation(log_dir, triton.grpc_port, {
        "max_prompt_chars": MAX_PROMPT_CHARS, "metrics_port": generation_metrics_port})
    yield port
    process.stop()


@pytest.fixture(scope="session")
def channel(generation_port):
    with grpc.insecure_channel(f"127.0.0.1:{generation_port}") as channel:
        yield channel


@pytest.fixture(scope="session")
def stub(channel) -> generation_pb2_grpc.GenerationServiceStub:
    return generation_pb2_grpc.GenerationServiceStub(channel)
