"""One real retrieval service (embedded Qdrant in a temporary directory) for the area's tests."""

from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from llmsuite.retrieval.v1 import retrieval_pb2_grpc

from tests.harness import ServiceProcess, free_port, start_service

# Small limits, so that the limit checks need no large requests.
SETTINGS = {"max_documents_per_request": 8, "max_document_chars": 1_000_000}


@dataclass
class Running:
    process: ServiceProcess
    port: int
    metrics_port: int
    stub: retrieval_pb2_grpc.RetrievalServiceStub


def start(tmp: Path, qdrant_path: Path, name: str = "retrieval") -> tuple[ServiceProcess, int, int]:
    metrics_port = free_port()
    process, port = start_service("retrieval", "retrieval", {**SETTINGS, "qdrant_path": qdrant_path,
                                                             "metrics_port": metrics_port}, tmp, name=name)
    return process, port, metrics_port


@pytest.fixture(scope="session")
def retrieval(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("retrieval")
    process, port, metrics_port = start(tmp, tmp / "qdrant")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Running(process, port, metrics_port, retrieval_pb2_grpc.RetrievalServiceStub(channel))
    finally:
        process.stop()


@pytest.fixture
def stub(retrieval) -> retrieval_pb2_grpc.RetrievalServiceStub:
    return retrieval.stub
