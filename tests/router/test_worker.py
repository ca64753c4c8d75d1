"""Batch jobs on real processes: `python -m services.worker` draining the Redis queue through two router
replicas; a worker killed with SIGKILL mid-job has its entries claimed by another, and the job ends
with exactly one result per request under one job per idempotency key."""

import re
import signal
import time

import grpc
import pytest
import redis
from llmsuite.inference.v1 import inference_pb2 as pb

from services.router.config import PromptTemplate
from services.router.jobs import GROUP, QUEUE, idempotency_key
from services.router.validation import Turn
from tests.harness import assert_grpc_error, free_port, poll, start_service
from tests.router.support import expected_answer, model_prompt, scrape

pytestmark = pytest.mark.integration

TENANT = "batcher"
QUESTIONS = [f"Describe step by step how to prune rose bush number {n}." for n in range(6)]
SAMPLING = pb.SamplingParams(max_tokens=384)


def start_worker(log_dir, redis_url: str, router_port: int, name: str, **settings):
    """A worker process (SERVING once the router is and the queue is reachable); returns it and its metrics port."""
    metrics_port = settings.setdefault("metrics_port", free_port())
    process, _ = start_service("worker", "worker", {"router_url": f"127.0.0.1:{router_port}", "consumer": name,
                                                    "block_s": 0.2, **settings},
                               log_dir, env={"REDIS_URL": redis_url}, name=name, timeout=60)
    return process, metrics_port


def pending_of(client: redis.Redis, consumer: str) -> int:
    for entry in client.xpending(QUEUE, GROUP)["consumers"]:
        if entry["name"].decode() == consumer:
            return entry["pending"]
    return 0


def submit(stub, key: str) -> pb.SubmitBatchResponse:
    requests = [pb.GenerateRequest(prompt=q, tier=pb.TIER_FULL, sampling=SAMPLING,
                                   cache_policy=pb.CACHE_POLICY_BYPASS) for q in QUESTIONS]
    return stub.SubmitBatch(pb.SubmitBatchRequest(requests=requests, idempotency_key=key),
                            metadata=[("x-llmsuite-tenant", TENANT), ("x-llmsuite-key-id", "nightly-key")],
                            timeout=10)


def get_job(stub, job_id: str, tenant: str = TENANT) -> pb.Job:
    return stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=[("x-llmsuite-tenant", tenant)], timeout=10).job


def test_a_worker_killed_mid_job_leaves_its_requests_to_another_and_the_job_finishes_once(
        log_dir, redis_url, redis_routers):
    stubs = [replica.stub() for replica in redis_routers]
    client = redis.Redis.from_url(redis_url)
    first = submit(stubs[0], "nightly-run")
    assert first.created and first.state == pb.JOB_STATE_QUEUED
    again = submit(stubs[1], "nightly-run")
    assert (again.job_id, again.created) == (first.job_id, False)

    doomed, _ = start_worker(log_dir, redis_url, redis_routers[0].port, "worker-doomed", concurrency=1)
    try:
        # Killed while it holds an entry it has not acknowledged: a request in the middle of being answered.
        poll(lambda: pending_of(client, "worker-doomed") > 0, "the first worker taking a request", timeout=60)
        doomed.signal(signal.SIGKILL)
        doomed.proc.wait(10)
    finally:
        doomed.stop()
    held = pending_of(client, "worker-doomed")
    assert held >= 1, "the killed worker left its request pending"
    assert get_job(stubs[0], first.job_id).state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING)

    survivor, metrics_port = start_worker(log_dir, redis_url, redis_routers[1].port, "worker-survivor",
                                          concurrency=2, claim_idle_s=1.0)
    try:
        def completed() -> pb.Job | None:
            job = get_job(stubs[1], first.job_id)
            return job if job.state == pb.JOB_STATE_COMPLETED else None

        job = poll(completed, "the job completing", timeout=120)
        assert scrape(f"http://127.0.0.1:{metrics_port}/metrics", "llmsuite_jobs_claimed_total") >= held
        assert survivor.stop() == 0, "a worker stops cleanly on SIGTERM"
    finally:
        survivor.stop()

    assert (job.total, job.succeeded, job.failed) == (6, 6, 0)
    assert [result.index for result in job.results] == list(range(6))
    for index, result in enumerate(job.results):
        # The job's request ids are job-derived, so each answer is exactly computable.
        prompt = model_prompt(PromptTemplate(), [Turn("user", QUESTIONS[index])], f"{first.job_id}-{index}")
        assert result.response.text == expected_answer("full", prompt, SAMPLING.max_tokens), index
        assert result.response.request_id == f"{first.job_id}-{index}"
    assert job.finished_at.seconds >= job.created_at.seconds and job.expires_at.seconds > time.time()
    assert pending_of(client, "worker-doomed") == 0 and client.xlen(QUEUE) == 0
    # One job for the key: the same id after completion, one results set of six.
    assert submit(stubs[0], "nightly-run").job_id == first.job_id
    assert client.get(idempotency_key(TENANT, "nightly-run")).decode() == first.job_id
    assert client.hlen(f"llmsuite:jobs:{first.job_id}:results") == 6
    jobs = [key for key in client.scan_iter("llmsuite:jobs:*")
            if re.fullmatch(rb"llmsuite:jobs:[0-9a-f]{32}", key) and client.hget(key, "tenant") == TENANT.encode()]
    assert jobs == [f"llmsuite:jobs:{first.job_id}".encode()]
    # Another tenant cannot see it.
    with pytest.raises(grpc.RpcError) as other:
        get_job(stubs[0], first.job_id, tenant="acme")
    assert_grpc_error(other.value, grpc.StatusCode.NOT_FOUND)


def test_a_job_cancelled_on_one_replica_is_cancelled_on_the_other(redis_routers):
    stub = redis_routers[0].stub()
    job_id = submit(stub, "cancel-me").job_id
    cancelled = stub.CancelJob(pb.CancelJobRequest(job_id=job_id), metadata=[("x-llmsuite-tenant", TENANT)],
                               timeout=10).job
    assert cancelled.state == pb.JOB_STATE_CANCELLED and cancelled.finished_at.seconds > 0
    assert get_job(redis_routers[1].stub(), job_id).state == pb.JOB_STATE_CANCELLED
