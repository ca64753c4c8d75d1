"""Wires the worker: a JobRunner over the Redis job queue, answering through the router's gRPC API.

Why the router's API and not the pipeline in this process: the pipeline (guardrails,
cache, budgets, usage records) then lives in one place, the router; a worker needs
no model, guardrails or retrieval connections of its own, and adding workers does
not multiply the upstream connections and caps the router keeps. Each request goes
out with the job's tenant and key id as the identity metadata the gateway would
set, so it is answered, budgeted and counted as that tenant's (key's) call.
"""

import asyncio
import logging
import os
import socket

import grpc
import redis.asyncio as aioredis
from google.rpc import error_details_pb2, status_pb2
from llmsuite.inference.v1 import inference_pb2, inference_pb2_grpc

from services.common.channels import upstream_channel, wait_serving
from services.common.config import ConfigError
from services.common.context import KEY_ID_HEADER, REQUEST_ID_HEADER, TENANT_HEADER
from services.common.server import Service
from services.router.job_runner import JobFailure, JobRunner, RunnerPolicy, item_request_id
from services.router.jobs import JobRecord, RedisJobs
from services.router.metrics import QUEUE_DEPTH, QUEUE_OLDEST_AGE
from services.router.stores import StoreError
from services.worker.config import WorkerSettings

log = logging.getLogger(__name__)


def failure_of(err: grpc.aio.AioRpcError) -> JobFailure:
    """The router's error as a job failure: code, message, ErrorInfo reason, RetryInfo delay."""
    reason, retry_after_s = "", None
    for key, value in err.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        for detail in status_pb2.Status.FromString(value).details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after_s = retry.retry_delay.ToMilliseconds() / 1000
    return JobFailure(err.code().name, err.details() or err.code().name, reason, retry_after_s)


class RouterExecutor:
    """Sends a job's request to the router as the job's tenant and key."""

    def __init__(self, settings: WorkerSettings):
        self._timeout_s = settings.request_timeout_s
        self.channel = upstream_channel(settings.router_url)
        self._stub = inference_pb2_grpc.InferenceServiceStub(self.channel)

    async def generate(self, job: JobRecord, index: int,
                       request: inference_pb2.GenerateRequest) -> inference_pb2.GenerateResponse:
        metadata = [(TENANT_HEADER, job.tenant), (REQUEST_ID_HEADER, item_request_id(job.job_id, index))]
        if job.key_id:
            metadata.append((KEY_ID_HEADER, job.key_id))
        try:
            return await self._stub.Generate(request, timeout=self._timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as err:
            raise failure_of(err) from None


async def _wait_for_queue(jobs: RedisJobs) -> None:
    delay = 0.1
    while True:
        try:
            await jobs.ensure_group()
            return
        except StoreError as err:
            log.warning("job queue not reachable yet: %s", err)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def export_queue_stats(jobs: RedisJobs, interval_s: float) -> None:
    """Queue depth and the oldest request's age as gauges; every worker reports the same
    queue, so dashboards take the max over workers."""
    while True:
        try:
            stats = await jobs.queue_stats()
        except StoreError as err:
            log.warning("queue statistics not read: %s", err)
        else:
            QUEUE_DEPTH.labels("waiting").set(stats.waiting)
            QUEUE_DEPTH.labels("pending").set(stats.pending)
            QUEUE_OLDEST_AGE.set(stats.oldest_age_s)
        await asyncio.sleep(interval_s)


def build_service(settings: WorkerSettings) -> Service:
    if not settings.redis_url:
        raise ConfigError("worker.redis_url (or $REDIS_URL) is required: the job queue lives in Redis; "
                          "without Redis the router runs jobs itself (router.job_workers)")
    # A blocking read waits block_s, so the socket may take that long on top.
    client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=settings.redis_timeout_s + settings.block_s,
                                     socket_connect_timeout=settings.redis_timeout_s, retry_on_timeout=False)
    jobs = RedisJobs(client)
    executor = RouterExecutor(settings)
    consumer = settings.consumer or f"{socket.gethostname()}-{os.getpid()}"
    runner = JobRunner(jobs, executor, consumer, RunnerPolicy(
        concurrency=settings.concurrency, claim_idle_s=settings.claim_idle_s, block_s=settings.block_s,
        max_attempts=settings.max_attempts, budget_wait_max_s=settings.budget_wait_max_s))
    background: list[asyncio.Task] = []

    async def warm_up() -> None:
        await wait_serving(executor.channel, "router")
        await _wait_for_queue(jobs)
        log.info("working as consumer %s", consumer, extra={"consumer": consumer})
        background.append(asyncio.create_task(runner.run()))
        background.append(asyncio.create_task(export_queue_stats(jobs, settings.queue_stats_interval_s)))

    async def close() -> None:
        await runner.stop(settings.grace_seconds)
        for task in background:
            task.cancel()
        await executor.channel.close()
        await client.aclose()

    return Service(name="worker", settings=settings, service_names=[], register=lambda server: None,
                   warm_up=warm_up, close=close)
