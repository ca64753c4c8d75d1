"""SubmitBatch, GetJob and CancelJob: batch jobs as their tenant sees them (the store is jobs.py).

Every request of a batch is validated when it is submitted, so a malformed one is
INVALID_ARGUMENT naming `requests[i]` at once rather than a failed result later. A
job belongs to the tenant that submitted it; another tenant's job id reads as
unknown (NOT_FOUND). The same idempotency key returns the same job; the key with
different requests is ALREADY_EXISTS (reason IDEMPOTENCY_KEY_REUSED, with the job id).
"""

import logging
import re

from llmsuite.inference.v1 import inference_pb2

from services.common.context import key_id_var, tenant_var
from services.common.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from services.router.config import RouterSettings
from services.router.jobs import JobRecord, Jobs, requests_digest
from services.router.stores import StoreError
from services.router.timestamps import timestamp
from services.router.validation import validate

log = logging.getLogger(__name__)

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_IDEMPOTENCY_KEY_CHARS = 128


def _unavailable(err: StoreError) -> Unavailable:
    log.warning("job store unavailable: %s", err)
    return Unavailable("jobs cannot be reached right now; retry shortly", reason="JOBS_UNAVAILABLE",
                       retry_after_s=1.0)


class Batches:
    def __init__(self, settings: RouterSettings, jobs: Jobs):
        self._settings = settings
        self._jobs = jobs

    def _validated(self, request: inference_pb2.SubmitBatchRequest) -> list[bytes]:
        key = request.idempotency_key
        if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable():
            raise InvalidArgument(f"idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable characters",
                                  field="idempotency_key")
        limit = self._settings.max_batch_requests
        if not 1 <= len(request.requests) <= limit:
            raise InvalidArgument(f"a batch holds 1 to {limit} requests, not {len(request.requests)}",
                                  field="requests")
        tenant = self._settings.tenant(tenant_var.get())
        for index, item in enumerate(request.requests):
            try:
                validate(item, self._settings, tenant)
            except InvalidArgument as err:
                raise InvalidArgument(f"requests[{index}]: {err.message}", field=f"requests[{index}].{err.field}",
                                      reason=err.reason) from None
        return [item.SerializeToString(deterministic=True) for item in request.requests]

    async def submit(self, request: inference_pb2.SubmitBatchRequest) -> inference_pb2.SubmitBatchResponse:
        blobs = self._validated(request)
        try:
            submitted = await self._jobs.submit(tenant_var.get(), key_id_var.get(), request.idempotency_key, blobs,
                                                self._settings.job_ttl_s)
        except StoreError as err:
            raise _unavailable(err) from None
        if not submitted.created and submitted.digest != requests_digest(blobs):
            raise AlreadyExists("this idempotency_key was used for a job with other requests; use a new key",
                                reason="IDEMPOTENCY_KEY_REUSED", metadata={"job_id": submitted.job_id})
        log.info("job submitted" if submitted.created else "job resubmitted",
                 extra={"job_id": submitted.job_id, "requests": len(blobs)})
        return inference_pb2.SubmitBatchResponse(job_id=submitted.job_id, created=submitted.created,
                                                 state=submitted.state)

    async def get(self, request: inference_pb2.GetJobRequest) -> inference_pb2.GetJobResponse:
        return inference_pb2.GetJobResponse(job=await self._message(await self._owned(request.job_id)))

    async def cancel(self, request: inference_pb2.CancelJobRequest) -> inference_pb2.CancelJobResponse:
        job = await self._owned(request.job_id)
        try:
            await self._jobs.cancel(job.job_id)
        except StoreError as err:
            raise _unavailable(err) from None
        return inference_pb2.CancelJobResponse(job=await self._message(await self._owned(job.job_id)))

    async def _owned(self, job_id: str) -> JobRecord:
        """The caller's tenant's job; NOT_FOUND for an unknown, expired or another tenant's job."""
        if not _JOB_ID.match(job_id):
            raise InvalidArgument("job_id must be the 32 hexadecimal characters SubmitBatch returned",
                                  field="job_id")
        try:
            job = await self._jobs.job(job_id)
        except StoreError as err:
            raise _unavailable(err) from None
        if job is None or job.tenant != tenant_var.get():
            raise NotFound(f"no job {job_id} (jobs are kept {self._settings.job_ttl_s:.0f} s after their "
                           "last change)", reason="JOB_NOT_FOUND")
        return job

    async def _message(self, job: JobRecord) -> inference_pb2.Job:
        try:
            results = await self._jobs.results(job.job_id)
        except StoreError as err:
            raise _unavailable(err) from None
        return inference_pb2.Job(
            job_id=job.job_id, state=job.state, total=job.total, succeeded=job.succeeded, failed=job.failed,
            results=[inference_pb2.JobResult.FromString(results[index]) for index in sorted(results)],
            created_at=timestamp(job.created_at), finished_at=timestamp(job.finished_at),
            expires_at=timestamp(job.expires_at))
