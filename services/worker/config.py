"""Settings of the batch-job worker (section `worker`)."""

from typing import ClassVar

from pydantic import Field

from services.common.config import ServerSettings


class WorkerSettings(ServerSettings):
    ENV_ALIASES: ClassVar[dict[str, str]] = {"redis_url": "REDIS_URL"}

    router_url: str = Field("127.0.0.1:50051", description="The router (InferenceService) the worker sends "
                                                           "each request of a job to, as the job's tenant.")
    redis_url: str = Field("", description="Redis holding the job queue (also $REDIS_URL); required: without "
                                           "Redis there is no shared queue, and the router runs jobs itself.")
    redis_timeout_s: float = Field(2.0, gt=0, description="Deadline for one Redis command (a blocking read "
                                                          "waits block_s on top).")
    consumer: str = Field("", description="This worker's name in the consumer group; empty: host name and "
                                          "process id (unique per process).")
    concurrency: int = Field(2, ge=1, le=256, description="Requests this worker sends to the router at once: "
                                                          "the cap that keeps batch work below interactive traffic.")
    claim_idle_s: float = Field(30.0, gt=0, description="A queue entry pending this long without its worker's "
                                                        "heartbeat is claimed by another worker (XAUTOCLAIM).")
    block_s: float = Field(1.0, gt=0, le=10, description="Longest wait for new entries in one read.")
    max_attempts: int = Field(3, ge=1, le=10, description="Attempts of a request the router answers with "
                                                          "UNAVAILABLE before it fails.")
    budget_wait_max_s: float = Field(60.0, ge=0, description="A request over its tenant's budget waits for the "
                                                             "RetryInfo delay up to this long; longer fails it.")
    request_timeout_s: float = Field(120.0, gt=0, description="Deadline of one request sent to the router.")
    queue_stats_interval_s: float = Field(5.0, gt=0, description="How often the worker reads the queue's depth "
                                                                  "and oldest entry for its metrics.")
