"""Job workers: drain the job queue (jobs.py), answer each request through the router, store its result.

One JobRunner per worker process (`python -m services.worker`, Redis) or inside the
router (no Redis). Each queue entry is one request of a job:
  - skipped (acknowledged) when the job is gone, finished or cancelled, or the
    request already has a result (a redelivery);
  - answered through an Executor: the router's gRPC API with the job's tenant and
    key as identity (the worker service), or the pipeline in process (the router);
  - its result stored once (the first one wins), then acknowledged.
An entry is acknowledged only after its result is stored: a worker killed in
between leaves it pending, and another worker claims it after `claim_idle_s`
(at least once). While an entry is worked on, a heartbeat resets its idle time, so
slow answers are not claimed from a live worker.

Priority: a runner answers at most `concurrency` requests at a time, whatever the
backlog, so batch work takes a bounded share of the router's upstreams next to
interactive calls, which have no such cap. Budgets apply as to any call: a request
over its tenant's budget waits for the RetryInfo delay when that is at most
`budget_wait_max_s` (a per-minute token budget), and fails with RESOURCE_EXHAUSTED
otherwise (a spent daily or monthly budget); UNAVAILABLE is retried with backoff up
to `max_attempts`; any other error is the request's result.
"""

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from llmsuite.inference.v1 import inference_pb2

from services.common.context import key_id_var, request_id_var, scopes_var, tenant_var
from services.common.errors import ServiceError
from services.router.events import Final
from services.router.jobs import FINISHED, Entry, JobRecord, Jobs
from services.router.metrics import JOB_CLAIMS, JOB_REQUESTS
from services.router.stores import StoreError

log = logging.getLogger(__name__)


def item_request_id(job_id: str, index: int) -> str:
    """The request id of a job's request: the same on every delivery, so a redelivered
    request gets the same prompt secrets and cache key, and feedback can name it."""
    return f"{job_id}-{index}"


class JobFailure(Exception):
    """A request of a job failed; code is the gRPC status code name."""

    def __init__(self, code: str, message: str, reason: str = "", retry_after_s: float | None = None):
        super().__init__(message)
        self.code, self.message, self.reason, self.retry_after_s = code, message, reason, retry_after_s

    @classmethod
    def of(cls, err: ServiceError) -> "JobFailure":
        return cls(err.code.name, err.message, err.reason, getattr(err, "retry_after_s", None))


class Executor(Protocol):
    async def generate(self, job: JobRecord, index: int,
                       request: inference_pb2.GenerateRequest) -> inference_pb2.GenerateResponse:
        """The answer to one request of `job`, as its tenant would get it; JobFailure when it fails."""


class PipelineExecutor:
    """Runs the router's pipeline in this process, as the job's tenant and key (the router's own workers)."""

    def __init__(self, pipeline):
        self._pipeline = pipeline

    async def generate(self, job: JobRecord, index: int,
                       request: inference_pb2.GenerateRequest) -> inference_pb2.GenerateResponse:
        # Each request runs in its own task, so these reach this request only.
        tenant_var.set(job.tenant)
        key_id_var.set(job.key_id)
        scopes_var.set("")
        request_id_var.set(item_request_id(job.job_id, index))
        try:
            async for event in self._pipeline.run(request, None, streaming=False):
                if isinstance(event, Final):
                    return event.response
        except ServiceError as err:
            raise JobFailure.of(err) from None
        raise JobFailure("UNAVAILABLE", "no answer was produced", retry_after_s=1.0)


@dataclass(frozen=True)
class RunnerPolicy:
    # Requests of jobs this runner answers at once.
    concurrency: int = 2
    # An entry pending this long without a heartbeat is claimed from its worker.
    claim_idle_s: float = 30.0
    # Longest wait for new entries in one read (the loop also stops within it).
    block_s: float = 1.0
    # Attempts of a request that fails with UNAVAILABLE.
    max_attempts: int = 3
    # Longest RetryInfo delay a request over budget waits for; longer fails it.
    budget_wait_max_s: float = 60.0
    # First backoff after UNAVAILABLE; doubles per attempt.
    retry_base_s: float = 0.5


class JobRunner:
    def __init__(self, jobs: Jobs, executor: Executor, consumer: str, policy: RunnerPolicy = RunnerPolicy()):
        self._jobs = jobs
        self._executor = executor
        self._consumer = consumer
        self._policy = policy
        self._tasks: dict[str, asyncio.Task] = {}
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Works until stop(): claims entries of dead workers, takes new ones, answers them."""
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            while not self._stopping.is_set():
                if len(self._tasks) >= self._policy.concurrency:
                    await asyncio.wait(self._tasks.values(), return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    entries = await self._next(self._policy.concurrency - len(self._tasks))
                except StoreError as err:
                    log.warning("job queue unavailable: %s", err)
                    await self._pause(1.0)
                    continue
                except Exception:
                    # A bug must not stop the worker for good; it is logged and the loop goes on.
                    log.exception("job queue read failed")
                    await self._pause(1.0)
                    continue
                for entry in entries:
                    task = asyncio.create_task(self._process(entry))
                    self._tasks[entry.entry_id] = task
                    task.add_done_callback(lambda _, entry_id=entry.entry_id: self._tasks.pop(entry_id, None))
        finally:
            heartbeat.cancel()

    async def stop(self, grace_s: float) -> None:
        """Takes nothing new; in-flight requests get `grace_s` to finish, then their entries are left
        pending for another worker to claim."""
        self._stopping.set()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks.values()), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _next(self, count: int) -> list[Entry]:
        claimed = await self._jobs.claim_stale(self._consumer, self._policy.claim_idle_s, count)
        if claimed:
            JOB_CLAIMS.inc(len(claimed))
            log.info("claimed %d job entries from a worker that stopped", len(claimed))
            return claimed
        return await self._jobs.take(self._consumer, count, self._policy.block_s)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._policy.claim_idle_s / 3)
            try:
                await self._jobs.keep(self._consumer, list(self._tasks))
            except StoreError as err:
                log.warning("job heartbeat skipped: %s", err)

    async def _process(self, entry: Entry) -> None:
        try:
            job = await self._jobs.job(entry.job_id)
            raw = None if job is None or job.state in FINISHED else await self._jobs.request(entry.job_id,
                                                                                               entry.index)
            if raw is None or await self._jobs.has_result(entry.job_id, entry.index):
                # Gone (expired), finished, cancelled, or answered by an earlier delivery.
                JOB_REQUESTS.labels("skipped").inc()
                await self._jobs.ack([entry.entry_id])
                return
            await self._jobs.start(entry.job_id)
            result = await self._answer(job, entry.index, inference_pb2.GenerateRequest.FromString(raw))
            succeeded = result.HasField("response")
            await self._jobs.put_result(entry.job_id, entry.index, result.SerializeToString(), succeeded)
            await self._jobs.ack([entry.entry_id])
            JOB_REQUESTS.labels("succeeded" if succeeded else "failed").inc()
        except StoreError as err:
            # Not acknowledged: the entry stays pending and is claimed again once idle.
            log.warning("job request %s/%d left for a retry: %s", entry.job_id, entry.index, err)
        except Exception:
            # A bug: the request fails rather than being delivered again and again.
            log.exception("job request %s/%d failed", entry.job_id, entry.index)
            await self._fail(entry)

    async def _fail(self, entry: Entry) -> None:
        error = inference_pb2.JobError(code="INTERNAL", message=f"internal error (request id "
                                       f"{item_request_id(entry.job_id, entry.index)}); it has been logged")
        try:
            await self._jobs.put_result(entry.job_id, entry.index, inference_pb2.JobResult(
                index=entry.index, error=error).SerializeToString(), False)
            await self._jobs.ack([entry.entry_id])
        except StoreError as err:
            log.warning("job request %s/%d left for a retry: %s", entry.job_id, entry.index, err)

    async def _answer(self, job: JobRecord, index: int, request) -> inference_pb2.JobResult:
        attempts = 0
        while True:
            try:
                response = await self._executor.generate(job, index, request)
                return inference_pb2.JobResult(index=index, response=response)
            except JobFailure as failure:
                if failure.reason != "BUDGET_EXCEEDED":
                    # Waiting for the budget is not a failed attempt.
                    attempts += 1
                wait = self._wait(failure, attempts)
                if wait is None:
                    return inference_pb2.JobResult(index=index, error=inference_pb2.JobError(
                        code=failure.code, message=failure.message, reason=failure.reason))
            log.info("job request %s/%d tried again in %.1fs", job.job_id, index, wait)
            await asyncio.sleep(wait)

    def _wait(self, failure: JobFailure, attempts: int) -> float | None:
        """Seconds before the next try, or None when the failure is the request's result."""
        policy = self._policy
        if failure.reason == "BUDGET_EXCEEDED":
            wait = failure.retry_after_s or 1.0
            return wait if wait <= policy.budget_wait_max_s else None
        if failure.code == "UNAVAILABLE" and attempts < policy.max_attempts:
            return failure.retry_after_s or policy.retry_base_s * 2 ** (attempts - 1)
        return None
