"""Bounded traffic through the edge for the chaos and soak runs, and what each request came to.

`Traffic` is an open-loop load generator: it starts requests at a fixed rate whatever
happens to the ones before (a fault does not slow the offered load down, as it would
with clients that wait for their answers), up to `max_outstanding` at once. It runs
on its own thread and event loop beside whatever the caller does (killing processes,
polling health), and records an `Outcome` per request. At the rates used here (tens
a second) one grpc.aio client is far from being the bottleneck.

The mix, like the whole-stack bench's: popular questions (answered from the cache
after their first time), fresh ones (a model answers), fresh ones streamed, and fresh
ones with retrieval from a collection, when one is given.
"""

import asyncio
import itertools
import random
import threading
import time
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2
from llmsuite.inference.v1 import inference_pb2, inference_pb2_grpc

POPULAR = [
    "What is the capital of France?", "How many days are in a leap year?", "What is photosynthesis?",
    "Who wrote Pride and Prejudice?", "What is the boiling point of water in Celsius?", "How do vaccines work?",
    "What is the speed of light?", "What causes the seasons on Earth?", "What is a black hole?",
    "How many continents are there?", "What is the largest ocean?", "Who painted the Mona Lisa?",
    "What is DNA?", "How does a rainbow form?", "What is inflation?", "What language is spoken in Brazil?",
]
SUBJECTS = ["tide pools", "glaciers", "sourdough", "lighthouses", "compilers", "volcanoes", "bees", "comets",
            "railways", "coral reefs", "wind turbines", "libraries"]
# Share of each kind of request (rag only when a collection is given).
MIX = {"popular": 0.4, "fresh": 0.25, "stream": 0.2, "rag": 0.15}
MAX_TOKENS = 16
# Past its deadline plus this, a call that has still not ended counts as hung even
# though gRPC should have ended it (the client itself is stuck).
_WATCHDOG_GRACE_S = 2.0


@dataclass
class Outcome:
    """What one request came to. Times are seconds since the traffic started."""

    kind: str
    started: float
    ended: float
    # "OK", a gRPC status name, or "HUNG" (the call outlived its deadline at the client).
    code: str
    reason: str = ""
    retry_info: bool = False
    degraded: tuple[str, ...] = ()
    # A stream that failed after some of its text had reached the caller.
    after_text: bool = False

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    @property
    def clean(self) -> bool:
        """Answered in full, not degraded."""
        return self.ok and not self.degraded

    @property
    def hung(self) -> bool:
        """Not answered, nor failed, before its deadline."""
        return self.code in ("DEADLINE_EXCEEDED", "HUNG")

    @property
    def label(self) -> str:
        """The failure's kind: code and ErrorInfo reason ("UNAVAILABLE GUARDRAILS_UNAVAILABLE")."""
        return f"{self.code} {self.reason}".strip()


def status_details(err: grpc.aio.AioRpcError) -> tuple[str, bool]:
    """The ErrorInfo reason and whether RetryInfo came with a failed call."""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            reason, retry = "", False
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason = info.reason
                retry = retry or detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR)
            return reason, retry
    return "", False


@dataclass
class Workload:
    """The request mix; deterministic for a seed, fresh questions numbered so none repeats."""

    collection: str = ""
    seed: int = 7
    _numbers: itertools.count = field(default_factory=itertools.count)

    def __post_init__(self):
        self._random = random.Random(self.seed)
        kinds = {kind: share for kind, share in MIX.items() if kind != "rag" or self.collection}
        self._kinds, self._weights = list(kinds), list(kinds.values())

    def next(self) -> tuple[str, inference_pb2.GenerateRequest]:
        kind = self._random.choices(self._kinds, self._weights)[0]
        sampling = inference_pb2.SamplingParams(max_tokens=MAX_TOKENS)
        if kind == "popular":
            return kind, inference_pb2.GenerateRequest(prompt=self._random.choice(POPULAR), sampling=sampling)
        question = f"What is one fact about {self._random.choice(SUBJECTS)} in case study {next(self._numbers)}?"
        request = inference_pb2.GenerateRequest(prompt=question, sampling=sampling)
        if kind == "rag":
            request.retrieval.collection = self.collection
            request.retrieval.top_k = 2
        return kind, request


class Traffic:
    """Requests to the edge at `rate` a second, each with `deadline_s`, until stopped."""

    def __init__(self, target: str, api_key: str, rate: float, *, deadline_s: float = 10.0,
                 max_outstanding: int = 64, collection: str = "", seed: int = 7):
        self.target, self.rate, self.deadline_s = target, rate, deadline_s
        self.max_outstanding = max_outstanding
        self.outcomes: list[Outcome] = []
        # Requests not started because max_outstanding were already in flight, and the
        # longest a request started after its time: both near 0 say the generator kept up.
        self.skipped = 0
        self.max_lag_s = 0.0
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self.workload = Workload(collection, seed)
        self._in_flight: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="traffic", daemon=True)
        self._t0 = 0.0

    def now(self) -> float:
        """Seconds since the traffic started, on the clock of the outcomes."""
        return time.monotonic() - self._t0

    def start_clock(self) -> None:
        """Time 0 of the outcomes is now."""
        self._t0 = time.monotonic()

    def start(self) -> "Traffic":
        self.start_clock()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops starting requests and waits for those in flight (each ends by its deadline)."""
        self._stop.set()
        self._thread.join(self.deadline_s + 2 * _WATCHDOG_GRACE_S)

    def in_flight_since(self) -> list[float]:
        """Start times of the requests in flight now."""
        return [started for _, started in list(self._in_flight.values())]

    def since(self, t: float) -> list[Outcome]:
        """Outcomes of the requests that ended at or after `t`."""
        return [o for o in list(self.outcomes) if o.ended >= t]

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            tasks: set[asyncio.Task] = set()
            for n in itertools.count():
                if self._stop.is_set():
                    break
                due = self._t0 + n / self.rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                self.max_lag_s = max(self.max_lag_s, time.monotonic() - due)
                if len(tasks) >= self.max_outstanding:
                    self.skipped += 1
                    continue
                task = asyncio.create_task(self._one(stub, n))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks)

    async def _one(self, stub: inference_pb2_grpc.InferenceServiceStub, n: int) -> None:
        kind, request = self.workload.next()
        started = self.now()
        self._in_flight[n] = (kind, started)
        try:
            outcome = await asyncio.wait_for(self.ask(stub, kind, request),
                                             self.deadline_s + _WATCHDOG_GRACE_S)
        except asyncio.TimeoutError:
            outcome = {"code": "HUNG"}
        finally:
            del self._in_flight[n]
        self.outcomes.append(Outcome(kind=kind, started=started, ended=self.now(), **outcome))

    async def ask(self, stub, kind: str, request: inference_pb2.GenerateRequest) -> dict:
        """One request; what it came to, as Outcome fields."""
        received_text = False
        try:
            if kind == "stream":
                stream = inference_pb2.GenerateStreamRequest(prompt=request.prompt, sampling=request.sampling)
                final = None
                async for message in stub.GenerateStream(stream, metadata=self._metadata, timeout=self.deadline_s):
                    received_text = received_text or bool(message.text_delta)
                    if message.HasField("final"):
                        final = message.final
                if final is None:
                    return {"code": "INCOMPLETE", "after_text": received_text}
                reply = final
            else:
                reply = await stub.Generate(request, metadata=self._metadata, timeout=self.deadline_s)
            return {"code": "OK", "degraded": tuple(reply.degraded_reasons)}
        except grpc.aio.AioRpcError as err:
            reason, retry = status_details(err)
            return {"code": err.code().name, "reason": reason, "retry_info": retry, "after_text": received_text}


def saturation(target: str, api_key: str, clients: int, seconds: float, *, collection: str = "",
               deadline_s: float = 30.0) -> tuple[float, list[Outcome]]:
    """Answers a second (OK ones) with `clients` callers each sending its next request as
    soon as the last one ended (a closed loop, so the suite sets the pace), and the outcomes."""
    traffic = Traffic(target, api_key, rate=1.0, deadline_s=deadline_s, collection=collection)

    async def caller(stub, until: float) -> None:
        while time.monotonic() < until:
            kind, request = traffic.workload.next()
            started = traffic.now()
            outcome = await traffic.ask(stub, kind, request)
            traffic.outcomes.append(Outcome(kind=kind, started=started, ended=traffic.now(), **outcome))

    async def run() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            until = time.monotonic() + seconds
            await asyncio.gather(*(caller(stub, until) for _ in range(clients)))

    traffic.start_clock()
    asyncio.run(run())
    elapsed = traffic.now()
    return sum(1 for o in traffic.outcomes if o.ok) / elapsed, traffic.outcomes
