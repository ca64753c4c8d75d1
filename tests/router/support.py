"""Helpers for the router's integration tests: routers on real upstreams, exact expected answers."""

import re
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import grpc
import yaml
from grpc_status import rpc_status
from google.rpc import error_details_pb2
from llmsuite.inference.v1 import inference_pb2 as pb, inference_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from services.router.config import PromptTemplate
from services.router.prompt import Document, SecretSource, build
from services.router.validation import Turn
from tests.harness import REPO, ServiceProcess, free_port, start_service
from tests.stack_fixtures import CPU_MODEL_REPOSITORY

# The stand-ins' own text generator: the exact answer a model gives to a prompt.
sys.path.insert(0, str(REPO / "models" / "cpu"))
from standin.text import Sampling, complete, count_tokens, natural_length  # noqa: E402

CANARY_KEY = "router-tests-canary-key"
GARDEN = PromptTemplate(version="3", system="You answer questions about gardening, briefly.")


def answer_range(model: str) -> tuple[int, int]:
    config = (CPU_MODEL_REPOSITORY / "repository" / model / "config.pbtxt").read_text()
    low, high = re.search(r'key: "answer_tokens" value: \{ string_value: "(\d+)-(\d+)" \}', config).groups()
    return int(low), int(high)


def model_prompt(template: PromptTemplate, turns: Sequence[Turn], request_id: str,
                 documents: Sequence[Document] = ()) -> str:
    """The prompt the router builds for a request with this id (tests know the canary key)."""
    return build(template, turns, SecretSource(CANARY_KEY).for_request(request_id), documents)


def expected_answer(model: str, prompt: str, max_tokens: int) -> str:
    return complete(model, prompt, max_tokens, length_range=answer_range(model)).text


def long_answer_request_id(template: PromptTemplate, question: str, model: str, min_tokens: int) -> str:
    """A request id for which the model's natural answer to `question` has at least `min_tokens` tokens."""
    for n in range(1000):
        request_id = f"rid-long-{n}"
        prompt = model_prompt(template, [Turn("user", question)], request_id)
        if natural_length(model, prompt, Sampling(), answer_range(model)) >= min_tokens:
            return request_id
    raise AssertionError(f"no request id gives a {min_tokens}-token answer")


def prompt_tokens(prompt: str) -> int:
    return count_tokens(prompt)


@dataclass
class Router:
    process: ServiceProcess
    port: int
    metrics_port: int

    def stub(self) -> inference_pb2_grpc.InferenceServiceStub:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        return inference_pb2_grpc.InferenceServiceStub(channel)

    def metric(self, name: str, **labels: str) -> float:
        return scrape(f"http://127.0.0.1:{self.metrics_port}/metrics", name, **labels)


def scrape(url: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus metric's samples at `url` that carry `labels`."""
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def scrape_triton(triton, name: str, **labels: str) -> float:
    return scrape(triton.metrics_url, name, **labels)


def start_router(log_dir: Path, name: str, config: dict[str, Any], settings: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> Router:
    """A router process with `config` as its YAML `router` section."""
    path = log_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"router": {"canary_key": CANARY_KEY, **config}}))
    metrics_port = free_port()
    process, port = start_service("router", "router", {"metrics_port": metrics_port, **(settings or {})}, log_dir,
                                  env={"LLMSUITE_CONFIG": str(path), **(env or {})}, name=name, timeout=60)
    return Router(process, port, metrics_port)


def ask(stub, prompt: str = "", *, tenant: str = "default", request_id: str = "", timeout: float = 30,
        **fields) -> pb.GenerateResponse:
    metadata = [("x-llmsuite-tenant", tenant)]
    if request_id:
        metadata.append(("x-request-id", request_id))
    return stub.Generate(pb.GenerateRequest(prompt=prompt, **fields), timeout=timeout, metadata=metadata)


def ask_stream(stub, prompt: str = "", *, tenant: str = "default", request_id: str = "", timeout: float = 30,
               **fields):
    metadata = [("x-llmsuite-tenant", tenant)]
    if request_id:
        metadata.append(("x-request-id", request_id))
    return stub.GenerateStream(pb.GenerateStreamRequest(prompt=prompt, **fields), timeout=timeout, metadata=metadata)


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    status = rpc_status.from_call(err)
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def has_retry_info(err: grpc.RpcError) -> bool:
    status = rpc_status.from_call(err)
    return status is not None and any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)


