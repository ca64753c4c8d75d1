"""Batch jobs: their records, their results and the queue workers drain; in Redis or in process.

Redis (shared by every router replica and `python -m services.worker`):
  llmsuite:jobs:<id>            hash: tenant, key id, state, counts, times, ttl
  llmsuite:jobs:<id>:requests   hash: index -> GenerateRequest bytes
  llmsuite:jobs:<id>:results    hash: index -> JobResult bytes
  llmsuite:jobs:idem:<hash>     the job id of a tenant's idempotency key
  llmsuite:jobs:queue           a stream, one entry (job, index) per request, read by
                                the consumer group `workers`
Submitting is one Lua script: the idempotency key, the records and the queue entries
are written together or not at all, so one key never makes two jobs. A worker reads
entries with XREADGROUP; an entry stays pending until the worker acknowledges it
(XACK, then XDEL), so a worker that dies leaves its entries pending and another takes
them over with XAUTOCLAIM once they have been idle for `claim_idle_s`; a live worker
resets the idle time of the entries it works on. Delivery is at least once; a result
is stored with HSETNX, so a request answered twice still has one result, and the job
completes when every request has one. Every write restarts the job's TTL.

In process (no Redis): the same records in dictionaries and an asyncio queue drained
by the router's own workers; nothing survives a restart.
"""

import asyncio
import hashlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import redis.asyncio as aioredis
from llmsuite.inference.v1 import inference_pb2
from redis.exceptions import RedisError, ResponseError

from services.router.stores import StoreError

JOB_PREFIX = "llmsuite:jobs:"
IDEMPOTENCY_PREFIX = "llmsuite:jobs:idem:"
QUEUE = "llmsuite:jobs:queue"
GROUP = "workers"

QUEUED, RUNNING, COMPLETED, CANCELLED = (inference_pb2.JOB_STATE_QUEUED, inference_pb2.JOB_STATE_RUNNING,
                                         inference_pb2.JOB_STATE_COMPLETED, inference_pb2.JOB_STATE_CANCELLED)
FINISHED = (COMPLETED, CANCELLED)


def new_job_id() -> str:
    return uuid.uuid4().hex


def idempotency_key(tenant: str, key: str) -> str:
    return IDEMPOTENCY_PREFIX + hashlib.sha256(f"{tenant}\x00{key}".encode("utf-8")).hexdigest()


def requests_digest(requests: Sequence[bytes]) -> str:
    """What a submission asked, so a reused idempotency key with other requests is told apart."""
    digest = hashlib.sha256()
    for raw in requests:
        digest.update(len(raw).to_bytes(8, "big") + raw)
    return digest.hexdigest()


@dataclass
class JobRecord:
    job_id: str
    tenant: str
    key_id: str
    state: int
    total: int
    succeeded: int = 0
    failed: int = 0
    created_at: float = 0.0
    finished_at: float = 0.0
    ttl_s: float = 0.0
    digest: str = ""
    # When the record expires (unix time).
    expires_at: float = 0.0


@dataclass(frozen=True)
class Submitted:
    job_id: str
    created: bool
    state: int
    # The digest of the requests the job was made with (differs when a key is reused).
    digest: str


@dataclass(frozen=True)
class Entry:
    """One request of a job, as the queue delivers it."""

    entry_id: str
    job_id: str
    index: int


@dataclass(frozen=True)
class QueueStats:
    """The Redis queue now: entries no worker read yet, entries read and not finished,
    and the age of the oldest of either (0 when empty)."""

    waiting: int
    pending: int
    oldest_age_s: float


class Jobs(Protocol):
    async def submit(self, tenant: str, key_id: str, idempotency: str, requests: Sequence[bytes],
                     ttl_s: float) -> Submitted: ...

    async def job(self, job_id: str) -> JobRecord | None: ...

    async def results(self, job_id: str) -> dict[int, bytes]: ...

    async def request(self, job_id: str, index: int) -> bytes | None: ...

    async def has_result(self, job_id: str, index: int) -> bool: ...

    async def start(self, job_id: str) -> None:
        """QUEUED -> RUNNING (nothing else changes)."""

    async def put_result(self, job_id: str, index: int, result: bytes, succeeded: bool) -> bool:
        """Stores a request's result unless it has one; says whether this one was stored."""

    async def cancel(self, job_id: str) -> None:
        """QUEUED or RUNNING -> CANCELLED."""

    async def take(self, consumer: str, count: int, block_s: float) -> list[Entry]:
        """New entries for `consumer`, waiting up to block_s for the first."""

    async def claim_stale(self, consumer: str, idle_s: float, count: int) -> list[Entry]:
        """Entries another consumer took and has not touched for idle_s."""

    async def keep(self, consumer: str, entry_ids: Sequence[str]) -> None:
        """Tells the queue `consumer` still works on these (resets their idle time)."""

    async def ack(self, entry_ids: Sequence[str]) -> None: ...

    async def close(self) -> None: ...


@dataclass
class _MemoryJob:
    record: JobRecord
    requests: list[bytes]
    results: dict[int, bytes] = field(default_factory=dict)


class MemoryJobs:
    """Jobs in this process (one router, its own workers)."""

    def __init__(self, clock=time.time):
        self._clock = clock
        self._jobs: dict[str, _MemoryJob] = {}
        self._keys: dict[str, str] = {}
        self._queue: asyncio.Queue[Entry] = asyncio.Queue()
        self._entries = 0

    def _live(self, job_id: str) -> _MemoryJob | None:
        job = self._jobs.get(job_id)
        if job is not None and job.record.expires_at <= self._clock():
            del self._jobs[job_id]
            return None
        return job

    def _sweep(self) -> None:
        now = self._clock()
        for job_id in [job_id for job_id, job in self._jobs.items() if job.record.expires_at <= now]:
            del self._jobs[job_id]
        self._keys = {key: job_id for key, job_id in self._keys.items() if job_id in self._jobs}

    def _touch(self, job: _MemoryJob) -> None:
        job.record.expires_at = self._clock() + job.record.ttl_s

    async def submit(self, tenant: str, key_id: str, idempotency: str, requests: Sequence[bytes],
                     ttl_s: float) -> Submitted:
        self._sweep()
        key = idempotency_key(tenant, idempotency)
        existing = self._live(self._keys.get(key, ""))
        if existing is not None:
            return Submitted(existing.record.job_id, False, existing.record.state, existing.record.digest)
        job_id, now = new_job_id(), self._clock()
        record = JobRecord(job_id, tenant, key_id, QUEUED, len(requests), created_at=now, ttl_s=ttl_s,
                           digest=requests_digest(requests), expires_at=now + ttl_s)
        self._jobs[job_id] = _MemoryJob(record, list(requests))
        self._keys[key] = job_id
        for index in range(len(requests)):
            self._entries += 1
            self._queue.put_nowait(Entry(str(self._entries), job_id, index))
        return Submitted(job_id, True, QUEUED, record.digest)

    async def job(self, job_id: str) -> JobRecord | None:
        job = self._live(job_id)
        return None if job is None else JobRecord(**vars(job.record))

    async def results(self, job_id: str) -> dict[int, bytes]:
        job = self._live(job_id)
        return {} if job is None else dict(job.results)

    async def request(self, job_id: str, index: int) -> bytes | None:
        job = self._live(job_id)
        return None if job is None or not 0 <= index < len(job.requests) else job.requests[index]

    async def has_result(self, job_id: str, index: int) -> bool:
        job = self._live(job_id)
        return job is not None and index in job.results

    async def start(self, job_id: str) -> None:
        job = self._live(job_id)
        if job is not None and job.record.state == QUEUED:
            job.record.state = RUNNING

    async def put_result(self, job_id: str, index: int, result: bytes, succeeded: bool) -> bool:
        job = self._live(job_id)
        if job is None or index in job.results:
            return False
        job.results[index] = result
        record = job.record
        if succeeded:
            record.succeeded += 1
        else:
            record.failed += 1
        if record.state not in FINISHED and record.succeeded + record.failed >= record.total:
            record.state, record.finished_at = COMPLETED, self._clock()
        self._touch(job)
        return True

    async def cancel(self, job_id: str) -> None:
        job = self._live(job_id)
        if job is not None and job.record.state not in FINISHED:
            job.record.state, job.record.finished_at = CANCELLED, self._clock()

    async def take(self, consumer: str, count: int, block_s: float) -> list[Entry]:
        try:
            entries = [await asyncio.wait_for(self._queue.get(), block_s)]
        except asyncio.TimeoutError:
            return []
        while len(entries) < count and not self._queue.empty():
            entries.append(self._queue.get_nowait())
        return entries

    async def claim_stale(self, consumer: str, idle_s: float, count: int) -> list[Entry]:
        # One process: no other consumer can die and leave entries behind.
        return []

    async def keep(self, consumer: str, entry_ids: Sequence[str]) -> None:
        return None

    async def ack(self, entry_ids: Sequence[str]) -> None:
        return None

    async def close(self) -> None:
        self._jobs.clear()


# KEYS: idempotency key, job, requests, queue. ARGV: job id, tenant, key id, digest, now, ttl ms,
# then the requests. Returns {job id, created (0/1), state, digest}.
_SUBMIT = """
local existing = redis.call('GET', KEYS[1])
if existing then
  local job = redis.call('HMGET', 'llmsuite:jobs:' .. existing, 'state', 'digest')
  if job[1] then return {existing, 0, tonumber(job[1]), job[2]} end
end
local count = #ARGV - 6
redis.call('HSET', KEYS[2], 'tenant', ARGV[2], 'key_id', ARGV[3], 'digest', ARGV[4], 'state', 1,
           'total', count, 'succeeded', 0, 'failed', 0, 'created', ARGV[5], 'ttl', ARGV[6], 'idem', KEYS[1])
for i = 1, count do redis.call('HSET', KEYS[3], i - 1, ARGV[6 + i]) end
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[6])
for i = 1, count do redis.call('XADD', KEYS[4], '*', 'job', ARGV[1], 'index', i - 1) end
return {ARGV[1], 1, 1, ARGV[4]}
"""

# KEYS: job, requests, results. ARGV: index, result, succeeded (1/0), now.
# Returns 1 stored, 0 the request had a result, -1 no such job.
_PUT_RESULT = """
local state = tonumber(redis.call('HGET', KEYS[1], 'state') or '0')
if state == 0 then return -1 end
if redis.call('HSETNX', KEYS[3], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[3] == '1' and 'succeeded' or 'failed', 1)
local job = redis.call('HMGET', KEYS[1], 'total', 'succeeded', 'failed', 'ttl', 'idem')
if state ~= 3 and state ~= 4 and tonumber(job[2]) + tonumber(job[3]) >= tonumber(job[1]) then
  redis.call('HSET', KEYS[1], 'state', 3, 'finished', ARGV[4])
end
for _, key in ipairs({KEYS[1], KEYS[2], KEYS[3], job[5]}) do redis.call('PEXPIRE', key, job[4]) end
return 1
"""

# KEYS: job. ARGV: from state, to state, now (written as `finished` when given).
_TRANSITION = """
if tonumber(redis.call('HGET', KEYS[1], 'state') or '0') ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'finished', ARGV[3]) end
return 1
"""


def _job_keys(job_id: str) -> tuple[str, str, str]:
    key = JOB_PREFIX + job_id
    return key, key + ":requests", key + ":results"


def _entries(reply) -> list[Entry]:
    entries = []
    for entry_id, values in reply:
        if not values:
            # Deleted from the stream while pending: nothing left to do.
            continue
        values = {k.decode(): v.decode() for k, v in values.items()}
        entries.append(Entry(entry_id.decode(), values["job"], int(values["index"])))
    return entries


class RedisJobs:
    """Jobs in Redis: the router submits and reads them, workers drain the queue."""

    def __init__(self, client: aioredis.Redis, clock=time.time):
        self._client = client
        self._clock = clock
        self._submit = client.register_script(_SUBMIT)
        self._put_result = client.register_script(_PUT_RESULT)
        self._transition = client.register_script(_TRANSITION)

    async def _call(self, what: str, coroutine):
        try:
            return await coroutine
        except (RedisError, OSError) as err:
            raise StoreError(f"redis jobs {what} failed: {type(err).__name__}") from err

    async def submit(self, tenant: str, key_id: str, idempotency: str, requests: Sequence[bytes],
                     ttl_s: float) -> Submitted:
        job_id = new_job_id()
        job, stored, _ = _job_keys(job_id)
        digest = requests_digest(requests)
        reply = await self._call("submit", self._submit(
            keys=[idempotency_key(tenant, idempotency), job, stored, QUEUE],
            args=[job_id, tenant, key_id, digest, repr(self._clock()), int(ttl_s * 1000), *requests]))
        found, created, state, found_digest = reply
        return Submitted(found.decode(), bool(created), int(state), found_digest.decode())

    async def job(self, job_id: str) -> JobRecord | None:
        key = JOB_PREFIX + job_id
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hgetall(key)
            pipe.pttl(key)
            values, ttl_ms = await self._call("get", pipe.execute())
        if not values:
            return None
        values = {k.decode(): v.decode() for k, v in values.items()}
        return JobRecord(job_id, values["tenant"], values["key_id"], int(values["state"]), int(values["total"]),
                         int(values["succeeded"]), int(values["failed"]), float(values["created"]),
                         float(values.get("finished", 0)), int(values["ttl"]) / 1000, values["digest"],
                         self._clock() + max(ttl_ms, 0) / 1000)

    async def results(self, job_id: str) -> dict[int, bytes]:
        raw = await self._call("results", self._client.hgetall(_job_keys(job_id)[2]))
        return {int(index): value for index, value in raw.items()}

    async def request(self, job_id: str, index: int) -> bytes | None:
        return await self._call("request", self._client.hget(_job_keys(job_id)[1], str(index)))

    async def has_result(self, job_id: str, index: int) -> bool:
        return bool(await self._call("result", self._client.hexists(_job_keys(job_id)[2], str(index))))

    async def start(self, job_id: str) -> None:
        await self._call("start", self._transition(keys=[JOB_PREFIX + job_id], args=[QUEUED, RUNNING, ""]))

    async def put_result(self, job_id: str, index: int, result: bytes, succeeded: bool) -> bool:
        stored = await self._call("result", self._put_result(
            keys=list(_job_keys(job_id)), args=[index, result, int(succeeded), repr(self._clock())]))
        return int(stored) == 1

    async def cancel(self, job_id: str) -> None:
        for state in (QUEUED, RUNNING):
            await self._call("cancel", self._transition(keys=[JOB_PREFIX + job_id],
                                                        args=[state, CANCELLED, repr(self._clock())]))

    async def ensure_group(self) -> None:
        """Creates the stream and its consumer group (from the start: entries added before count too)."""
        try:
            await self._client.xgroup_create(QUEUE, GROUP, id="0", mkstream=True)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise StoreError(f"redis xgroup create failed: {err}") from err
        except (RedisError, OSError) as err:
            raise StoreError(f"redis xgroup create failed: {type(err).__name__}") from err

    async def take(self, consumer: str, count: int, block_s: float) -> list[Entry]:
        reply = await self._call("read", self._client.xreadgroup(
            GROUP, consumer, {QUEUE: ">"}, count=count, block=max(int(block_s * 1000), 1)))
        return [entry for _, entries in reply or () for entry in _entries(entries)]

    async def claim_stale(self, consumer: str, idle_s: float, count: int) -> list[Entry]:
        reply = await self._call("autoclaim", self._client.xautoclaim(
            QUEUE, GROUP, consumer, min_idle_time=int(idle_s * 1000), start_id="0-0", count=count))
        return _entries(reply[1])

    async def keep(self, consumer: str, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            await self._call("claim", self._client.xclaim(QUEUE, GROUP, consumer, 0, list(entry_ids),
                                                          justid=True))

    async def ack(self, entry_ids: Sequence[str]) -> None:
        if not entry_ids:
            return
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xack(QUEUE, GROUP, *entry_ids)
            pipe.xdel(QUEUE, *entry_ids)
            await self._call("ack", pipe.execute())

    async def queue_stats(self) -> QueueStats:
        """How much work waits in the queue, and since when (the oldest entry's id is its time)."""
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.xlen(QUEUE)
            pipe.xpending(QUEUE, GROUP)
            pipe.xrange(QUEUE, count=1)
            pipe.time()
            length, pending, oldest, (seconds, micros) = await self._call("stats", pipe.execute())
        age_s = 0.0
        if oldest:
            added_ms = int(oldest[0][0].split(b"-")[0])
            age_s = max(seconds + micros / 1e6 - added_ms / 1000, 0.0)
        return QueueStats(length - pending["pending"], pending["pending"], age_s)

    async def close(self) -> None:
        return None
