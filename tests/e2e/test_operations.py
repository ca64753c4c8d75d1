"""The tenant-facing operations through the secured edge: scopes enforced, HTTP/JSON transcoded."""

import json
import urllib.error
import urllib.request

import grpc
import pytest
from llmsuite.inference.v1 import inference_pb2, inference_pb2_grpc

from tests.harness import assert_grpc_error, poll

pytestmark = pytest.mark.integration


def post_json(stack, method: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.ports.envoy}/llmsuite.inference.v1.InferenceService/{method}",
        data=json.dumps(body).encode(), method="POST",
        headers={"content-type": "application/json", "x-api-key": stack.api_key})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, {}


def test_a_batch_submitted_as_json_is_answered_by_the_routers_own_workers(stack, edge_channel):
    status, submitted = post_json(stack, "SubmitBatch", {"idempotency_key": "e2e-json", "requests": [
        {"prompt": "What does a rate limiter do?", "sampling": {"max_tokens": 16}}]})
    assert status == 200 and submitted["created"] is True
    stub = inference_pb2_grpc.InferenceServiceStub(edge_channel)
    job_id = submitted["jobId"]

    def completed() -> inference_pb2.Job | None:
        job = stub.GetJob(inference_pb2.GetJobRequest(job_id=job_id), timeout=10).job
        return job if job.state == inference_pb2.JOB_STATE_COMPLETED else None

    job = poll(completed, "the job completing", timeout=60)
    assert job.succeeded == 1
    assert job.results[0].response.text and job.results[0].response.request_id == f"{job_id}-0"


def test_usage_of_another_tenant_is_refused_to_a_key_without_admin(stack, edge_channel):
    stub = inference_pb2_grpc.InferenceServiceStub(edge_channel)
    with pytest.raises(grpc.RpcError) as denied:
        stub.GetUsage(inference_pb2.GetUsageRequest(tenant="someone-else"), timeout=10)
    assert_grpc_error(denied.value, grpc.StatusCode.PERMISSION_DENIED, "admin")
    status, own = post_json(stack, "GetUsage", {"window": "USAGE_WINDOW_MONTH"})
    assert status == 200 and own["tenant"] == "default" and own["window"] == "USAGE_WINDOW_MONTH"
    assert post_json(stack, "GetUsage", {"tenant": "someone-else"})[0] == 403
