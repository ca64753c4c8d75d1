"""The hot path under load (`make bench`): reports/bench.json, reports/bench.md and PNG plots.

Starts the suite as the chaos and soak runs do (evals/suite.py: every process of
`make run`, the CPU stand-in models, one shared Redis, so authz's revocations and the
global rate limit are on, with the bench key's limits far above the offered load),
ingests part of the SciFact corpus through the edge, and drives Envoy with:

  w1       the same question again and again (an exact cache hit), gRPC, h2load;
  w1_json  the same over HTTP/JSON through Envoy's transcoder, wrk;
  w2b      unique short questions: input guardrails, the light model (32 tokens),
           output check; HTTP/JSON, wrk with evals/bench_wrk.lua making each unique;
  w2a      w2b plus retrieval (top 4) over the SciFact collection; SciFact train claims;
  w3       streams: time to first token through Envoy against calling Triton directly
           (gRPC, a Python client: h2load cannot see a first token);
  mixed    evals/stack_load.py's mix (60 % popular questions, 40 % fresh, a quarter of
           them long), Python gRPC clients; answered per minute against the seed's SLAs.

Each workload first ramps up connections (a closed loop: a connection sends its next
request when the last one is answered) for `--seconds` each; saturation is the point
with the most answers a second among those with at most 0.1 % errors. h2load and wrk
then hold 25 % and 50 % of it on twice the connections the rate needs at the
1-connection latency: h2load with --rps per connection, wrk (Debian's has
no -R, that is wrk2's) with a pause before each request, sized from the 1-connection
latency; the rate they reached is what is reported and plotted. The Python-driven
workloads (w3, mixed) report the ramp point nearest to each fraction instead.
Per point: answers a second, p50/p95/p99, errors by code, and CPU milliseconds per
request of every process (utime + stime from /proc, with its children) and of the
load generator (its rusage), before and after the point.

    .venv/bin/python evals/bench.py [--quick] [--seconds 6] [--only w1,w3]

BENCH_QUICK=1 (or --quick) is a smoke run: 2 s per point, two ramp points, a small
collection. Not part of `make test`. Timing is for the machine it runs on; the
report names the CPU and records the load average before and after.
"""

import argparse
import asyncio
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tritonclient.grpc.aio as triton_aio  # noqa: E402
from llmsuite.inference.v1 import inference_pb2 as pb, inference_pb2_grpc  # noqa: E402
from llmsuite.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from evals import bench_report as br  # noqa: E402
from evals import stack_load  # noqa: E402
from evals.stats import percentile  # noqa: E402
from evals.suite import Suite  # noqa: E402
from evals.traffic import SUBJECTS  # noqa: E402
from services.cli.retrieval import read_documents  # noqa: E402
from services.common.sampling import Sampling  # noqa: E402
from services.generation.triton import build_inputs  # noqa: E402

PATH = "/llmsuite.inference.v1.InferenceService/Generate"
MAX_TOKENS = 32
TOP_K = 4
COLLECTION = "scifact"
SAME_QUESTION = "What is the capital of France?"
LUA = REPO / "evals" / "bench_wrk.lua"
SLA_MS = {"p50": 500.0, "p95": 2000.0, "p99": 5000.0}


def scifact_dir() -> Path:
    root = os.environ.get("LLMSUITE_DATA_DIR")
    return (Path(root) if root else REPO.parent / "shared" / "data") / "retrieval" / "scifact"


class Bench:
    """The running suite, its processes' pids and the counters read around each point."""

    def __init__(self, suite: Suite, tmp: Path, seconds: float):
        self.suite, self.tmp, self.seconds = suite, tmp, seconds
        self.edge = suite.edge
        self.key = suite.api_key
        self.metadata = (("authorization", f"Bearer {self.key}"),)
        # Numbers the wrk runs, so that unique questions stay unique across runs.
        self.runs = itertools.count(1)
        self.pids: dict[str, list[int]] = {}
        for name, process in suite.processes.items():
            group = "router" if name.startswith("router") else name
            self.pids.setdefault(group, []).append(process.proc.pid)

    def measure(self, run: Callable[[], br.Point]) -> br.Point:
        """Runs one point with CPU accounting around it."""
        load = list(os.getloadavg())
        before = br.snapshot(self.pids)
        loadgen_before = _rusage_seconds()
        point = run()
        after = br.snapshot(self.pids)
        before["loadgen"], after["loadgen"] = loadgen_before, _rusage_seconds()
        point.cpu_ms_per_request = br.cpu_per_request(before, after, point.requests)
        point.load_average = [round(x, 2) for x in load]
        return point

    def router_codes(self) -> dict[str, float]:
        """The routers' Generate/GenerateStream calls so far, by status code (their /metrics)."""
        counts: dict[str, float] = {}
        for _, _, metrics_port in self.suite.stack.ports.routers():
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
                text = response.read().decode()
            for family in text_string_to_metric_families(text):
                if family.name != "llmsuite_rpc_requests":
                    continue
                for sample in family.samples:
                    if sample.name.endswith("_total") and sample.labels["method"] in ("Generate", "GenerateStream"):
                        code = sample.labels["code"]
                        counts[code] = counts.get(code, 0) + sample.value
        return counts

    def edge_refusals(self) -> dict[str, float]:
        """Envoy's own refusals so far (authz denied or failed, over the rate limit)."""
        port = self.suite.stack.ports.envoy_admin
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats?filter=ext_authz|ratelimit", timeout=5) as r:
            lines = r.read().decode().splitlines()
        wanted = ("ext_authz.denied", "ext_authz.error", "ratelimit.over_limit", "ratelimit.error")
        counts = {}
        for line in lines:
            name, _, value = line.partition(": ")
            if name.startswith("http.") and name.endswith(wanted):
                counts[name.split(".", 2)[2]] = counts.get(name.split(".", 2)[2], 0) + float(value)
        return counts

    # --- h2load: gRPC -------------------------------------------------------------

    def h2load_point(self, body: Path, connections: int, target_rps: float | None) -> br.Point:
        log = self.tmp / "h2load.log"
        argv = ["h2load", "-t", "1", "-c", str(connections), "-m", "1", "-D", f"{self.seconds:g}",
                "-d", str(body), "--log-file", str(log), "-H", "content-type: application/grpc",
                "-H", "te: trailers", "-H", f"x-api-key: {self.key}"]
        if target_rps:
            argv += ["--rps", f"{max(target_rps / connections, 0.1):.2f}"]
        log.unlink(missing_ok=True)  # h2load appends to its log file
        codes_before, edge_before = self.router_codes(), self.edge_refusals()
        started = time.perf_counter()
        subprocess.run([*argv, f"http://{self.edge}{PATH}"], capture_output=True, text=True, check=True,
                       timeout=self.seconds + 60)
        elapsed = time.perf_counter() - started
        latencies, errors = br.parse_h2load_log(log.read_text())
        # A gRPC failure is an HTTP 200 with grpc-status in its trailers, which h2load
        # does not read: the routers' counters and Envoy's refusals name them. CANCELLED
        # are the calls h2load ended itself when its time was up (not in its log).
        codes = _delta(codes_before, self.router_codes())
        for code, n in codes.items():
            if code not in ("OK", "CANCELLED") and n:
                errors[f"grpc {code}"] = int(n)
        for name, n in _delta(edge_before, self.edge_refusals()).items():
            if n:
                errors[f"envoy {name}"] = int(n)
        failed_200 = sum(n for k, n in errors.items() if k.startswith(("grpc", "envoy")))
        # 200s that no router answered OK and nobody counted as failed: Envoy's own gRPC
        # replies (no healthy upstream, overflow, a timeout).
        unseen = len(latencies) - int(codes.get("OK", 0)) - failed_200
        if unseen > 0:
            errors["envoy local reply"] = unseen
        requests = len(latencies) + sum(n for k, n in errors.items() if k.startswith(("http", "stream")))
        ok = requests - sum(errors.values())
        return br.Point(connections=connections, target_rps=target_rps, seconds=min(elapsed, self.seconds),
                        requests=requests, ok=ok, errors=errors, latency_ms=br.latency(latencies))

    # --- wrk: HTTP/JSON ---------------------------------------------------------------

    def wrk_point(self, questions: Path, template: Path, unique: bool, connections: int,
                  delay_ms: float = 0.0, target_rps: float | None = None) -> br.Point:
        argv = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{self.seconds:g}s", "--timeout", "30s",
                "-H", "content-type: application/json", "-H", f"x-api-key: {self.key}", "-s", str(LUA),
                f"http://{self.edge}{PATH}", "--", str(questions), str(template), "1" if unique else "0",
                f"{delay_ms:.1f}", str(next(self.runs))]
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=self.seconds + 60).stdout
        return br.wrk_point(br.parse_wrk(out), connections, target_rps)


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before.get(key, 0.0) for key in after}


def _rusage_seconds() -> float:
    """CPU of this process and of the children it has waited for (h2load, wrk)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def ramp_and_fractions(bench: Bench, ramp: tuple[int, ...],
                       point: Callable[[int, float | None, float], br.Point]) -> dict:
    """The ramp, the saturation point, and points held at 25 % and 50 % of it.

    `point(connections, target_rps, delay_ms)` measures one point."""
    points = [bench.measure(lambda c=c: point(c, None, 0.0)) for c in ramp]
    sat = br.saturation(points)
    at = {}
    if sat is not None:
        at["100"] = sat
        low = points[0].latency_ms["p50"]
        for fraction in (0.25, 0.5):
            connections, target = br.rate_plan(sat, fraction, low)
            delay_ms = max(connections * 1000 / target - low, 0.0) if target else 0.0
            held = bench.measure(lambda c=connections, t=target, d=delay_ms: point(c, t, d))
            points.append(held)
            at[str(int(fraction * 100))] = held
    return _workload(points, at, sat)


def nearest_fractions(points: list[br.Point]) -> dict:
    """For the Python-driven workloads: the ramp points nearest to each fraction of saturation."""
    sat = br.saturation(points)
    at = {}
    if sat is not None:
        for fraction in br.FRACTIONS:
            at[str(int(fraction * 100))] = min(points, key=lambda p: abs(p.rps - fraction * sat.rps))
    return _workload(points, at, sat)


def _workload(points: list[br.Point], at: dict[str, br.Point], sat: br.Point | None) -> dict:
    errors: dict[str, int] = {}
    for p in points:
        for code, n in p.errors.items():
            errors[code] = errors.get(code, 0) + n
    return {"rps": round(sat.rps, 1) if sat else 0.0, "at": {k: v.as_dict() for k, v in at.items()},
            "errors": errors, "cpu_ms_per_request": sat.cpu_ms_per_request if sat else {},
            "points": [p.as_dict() for p in points]}


# --- the workloads -----------------------------------------------------------------

def w1_grpc(bench: Bench, ramp: tuple[int, ...]) -> dict:
    message = pb.GenerateRequest(prompt=SAME_QUESTION, sampling=pb.SamplingParams(max_tokens=MAX_TOKENS))
    raw = message.SerializeToString()
    body = bench.tmp / "w1.bin"
    body.write_bytes(b"\x00" + len(raw).to_bytes(4, "big") + raw)
    with grpc.insecure_channel(bench.edge) as channel:  # the first ask fills the cache
        inference_pb2_grpc.InferenceServiceStub(channel).Generate(message, metadata=bench.metadata, timeout=60)
    result = ramp_and_fractions(bench, ramp, lambda c, rps, _delay: bench.h2load_point(body, c, rps))
    result["tool"] = "h2load, gRPC"
    result["overhead_p50_ms"] = result["points"][0]["latency_ms"]["p50"]
    return result


def json_template(tmp: Path, name: str, retrieval: bool, tier: bool) -> Path:
    body = {"prompt": "@Q@", "sampling": {"maxTokens": MAX_TOKENS}}
    if tier:
        body["tier"] = "TIER_LIGHT"
    if retrieval:
        body["retrieval"] = {"collection": COLLECTION, "topK": TOP_K}
    path = tmp / f"{name}.template.json"
    path.write_text(json.dumps(body) + "\n")
    return path


def question_file(tmp: Path, name: str, questions: list[str]) -> Path:
    path = tmp / f"{name}.questions"
    # JSON-escaped, without the quotes: the script puts each inside the template's string.
    path.write_text("".join(json.dumps(q)[1:-1] + "\n" for q in questions))
    return path


def wrk_workload(bench: Bench, name: str, ramp: tuple[int, ...], questions: list[str], *, unique: bool,
                 retrieval: bool = False, tier: bool = True) -> dict:
    qfile = question_file(bench.tmp, name, questions)
    template = json_template(bench.tmp, name, retrieval, tier)
    result = ramp_and_fractions(bench, ramp, lambda c, rps, delay: bench.wrk_point(
        qfile, template, unique, c, delay_ms=delay, target_rps=rps))
    result["tool"] = "wrk, HTTP/JSON"
    return result


# --- Python clients: streams and the mixed workload -------------------------------------

async def _ttft_through_edge(stub, metadata, prompt: str) -> tuple[float | None, str]:
    request = pb.GenerateStreamRequest(prompt=prompt, tier=pb.TIER_LIGHT,
                                       sampling=pb.SamplingParams(max_tokens=MAX_TOKENS))
    started, first = time.perf_counter(), None
    try:
        async for message in stub.GenerateStream(request, metadata=metadata, timeout=30):
            if first is None and message.text_delta:
                first = time.perf_counter()
    except grpc.aio.AioRpcError as err:
        return None, err.code().name
    return ((first or time.perf_counter()) - started) * 1000, "OK"


def stream_point(bench: Bench, connections: int, numbers) -> br.Point:
    """`connections` callers streaming unique questions back to back for bench.seconds."""
    ttfts, errors, total = [], {}, [0]

    async def caller(stub, until: float) -> None:
        while time.monotonic() < until:
            ttft, code = await _ttft_through_edge(stub, bench.metadata, f"{next(numbers)}: what is one fact "
                                                  f"about {SUBJECTS[len(ttfts) % len(SUBJECTS)]}?")
            total[0] += 1
            if ttft is None:
                errors[f"grpc {code}"] = errors.get(f"grpc {code}", 0) + 1
            else:
                ttfts.append(ttft)

    async def run() -> float:
        async with grpc.aio.insecure_channel(bench.edge) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            started = time.monotonic()
            await asyncio.gather(*(caller(stub, started + bench.seconds) for _ in range(connections)))
            return time.monotonic() - started

    elapsed = asyncio.run(run())
    return br.Point(connections=connections, target_rps=None, seconds=elapsed, requests=total[0],
                    ok=len(ttfts), errors=errors, latency_ms=br.latency(ttfts))


def triton_direct(port: int, count: int) -> tuple[list[float], list[float]]:
    """Time to first token and to the final response calling Triton's light model directly,
    `count` times in a row (ms)."""
    async def one(client, n: int) -> tuple[float, float]:
        inputs = build_inputs(f"{n}: what is one fact about {SUBJECTS[n % len(SUBJECTS)]}?",
                              Sampling(max_tokens=MAX_TOKENS), stream=True)

        async def requests():
            yield {"model_name": "light", "inputs": inputs}

        started, first = time.perf_counter(), None
        async for result, error in client.stream_infer(requests()):
            if error is not None:
                raise RuntimeError(f"Triton answered an error: {error}")
            response = result.get_response()
            text = result.as_numpy("text_output")
            if first is None and text is not None and text.size and np.asarray(text).reshape(-1)[0]:
                first = time.perf_counter()
            if response.parameters["triton_final_response"].bool_param:
                break
        ended = time.perf_counter()
        return ((first or ended) - started) * 1000, (ended - started) * 1000

    async def run() -> list[tuple[float, float]]:
        client = triton_aio.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            return [await one(client, n) for n in range(count)]
        finally:
            await client.close()

    times = asyncio.run(run())
    return [t[0] for t in times], [t[1] for t in times]


def w3(bench: Bench, ramp: tuple[int, ...]) -> dict:
    numbers = itertools.count(1)
    points = [bench.measure(lambda c=c: stream_point(bench, c, numbers)) for c in ramp]
    result = nearest_fractions(points)
    ttfts, totals = triton_direct(bench.suite.stack.ports.triton_grpc, max(20, int(bench.seconds * 10)))
    result["tool"] = "Python grpc.aio streams (GenerateStream), light model"
    result["triton_direct_ttft_p50_ms"] = round(percentile(ttfts, 50), 2)
    result["triton_direct_total_p50_ms"] = round(percentile(totals, 50), 2)
    result["edge_ttft_p50_ms"] = result["points"][0]["latency_ms"]["p50"]
    result["overhead_p50_ms"] = round(result["edge_ttft_p50_ms"] - result["triton_direct_ttft_p50_ms"], 2)
    result["latency_is"] = "time to first token"
    return result


# Codes a benign request may get only by being refused (a guardrail block, a limit).
REFUSALS = ("PERMISSION_DENIED", "INVALID_ARGUMENT", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED")


def mixed_point(bench: Bench, clients: int, workload: stack_load.Workload) -> br.Point:
    rows, elapsed = asyncio.run(stack_load.drive(bench.suite.stack.ports.envoy, bench.key, clients, 1.0,
                                                 bench.seconds, workload))
    ok = [row[3] for row in rows if row[1] == "OK"]
    errors: dict[str, int] = {}
    for row in rows:
        if row[1] != "OK":
            errors[f"grpc {row[1]}"] = errors.get(f"grpc {row[1]}", 0) + 1
    return br.Point(connections=clients, target_rps=None, seconds=elapsed, requests=len(rows), ok=len(ok),
                    errors=errors, latency_ms=br.latency(ok))


def mixed(bench: Bench, ramp: tuple[int, ...]) -> dict:
    # One workload for every point: its fresh questions go on being new.
    workload = stack_load.Workload()
    points = [bench.measure(lambda c=c: mixed_point(bench, c, workload)) for c in ramp]
    # The mix holds long questions that guardrails may refuse: saturation here is
    # the most answers a minute, and the refusals are counted, not excluded.
    best = max(points, key=lambda p: p.rps)
    result = _workload(points, {"100": best}, best)
    for fraction in (0.25, 0.5):
        result["at"][str(int(fraction * 100))] = min(points, key=lambda p: abs(p.rps - fraction * best.rps)).as_dict()
    result["tool"] = "Python grpc.aio clients (evals/stack_load.py's mix)"
    result["per_minute"] = round(best.rps * 60)
    result["slas_met"] = all(best.latency_ms[q] < limit for q, limit in SLA_MS.items())
    result["benign_refused"] = sum(n for code, n in best.errors.items() if code.split()[-1] in REFUSALS)
    return result


def ingest(bench: Bench, documents: int) -> dict:
    docs = read_documents(scifact_dir() / "corpus.jsonl")[:documents]
    started, chunks = time.perf_counter(), 0
    with grpc.insecure_channel(bench.edge) as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        for start in range(0, len(docs), 32):
            reply = stub.Upsert(retrieval_pb2.UpsertRequest(collection=COLLECTION, documents=docs[start:start + 32]),
                                metadata=bench.metadata, timeout=300)
            chunks += reply.chunks
    return {"documents": len(docs), "chunks": chunks, "seconds": round(time.perf_counter() - started, 1)}


def claims(limit: int = 800) -> list[str]:
    """SciFact's train claims (the tunable split; nothing is tuned here): W2a's questions."""
    with (scifact_dir() / "queries_train.jsonl").open(encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()][:limit]


def run(bench: Bench, quick: bool, only: set[str], documents: int) -> tuple[dict, dict]:
    ramps = {"w1": (1, 16) if quick else (1, 8, 32, 64), "w2": (1, 8) if quick else (1, 4, 16, 32),
             "w3": (1, 4) if quick else (1, 4, 16), "mixed": (8,) if quick else (8, 32, 64)}
    short = [f"What is one fact about {subject}?" for subject in SUBJECTS]
    jobs = {
        "w1": lambda: w1_grpc(bench, ramps["w1"]),
        "w1_json": lambda: wrk_workload(bench, "w1_json", ramps["w1"], [SAME_QUESTION], unique=False, tier=False),
        "w2b": lambda: wrk_workload(bench, "w2b", ramps["w2"], short, unique=True),
        "w2a": lambda: wrk_workload(bench, "w2a", ramps["w2"], claims(), unique=True, retrieval=True),
        "w3": lambda: w3(bench, ramps["w3"]),
        "mixed": lambda: mixed(bench, ramps["mixed"]),
    }
    extra = {}
    if not only or "w2a" in only:
        extra["collection"] = ingest(bench, documents)
        print(f"  ingested {extra['collection']}", file=sys.stderr)
    results = {}
    for name, job in jobs.items():
        if only and name not in only:
            continue
        print(f"  {name} ...", file=sys.stderr)
        results[name] = job()
        print(f"  {name}: {results[name]['rps']} req/s at saturation, errors {results[name]['errors'] or 'none'}",
              file=sys.stderr)
    if "w3" in results:
        # w2's overhead: its 1-connection median less a whole 32-token light generation
        # called on Triton directly.
        direct_total = results["w3"]["triton_direct_total_p50_ms"]
        for name in ("w2a", "w2b"):
            if name in results:
                results[name]["overhead_p50_ms"] = round(results[name]["points"][0]["latency_ms"]["p50"]
                                                         - direct_total, 2)
    return results, extra


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    parser.add_argument("--seconds", type=float, default=0.0, help="per point (default 6, quick 2)")
    parser.add_argument("--documents", type=int, default=0, help="SciFact documents ingested (default 500, quick 50)")
    parser.add_argument("--routers", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated workloads (default: all)")
    parser.add_argument("--output-dir", type=Path, default=REPO / "reports")
    parser.add_argument("--report-only", action="store_true",
                        help="write bench.md and the plots again from the bench.json there; measure nothing")
    args = parser.parse_args()
    if args.report_only:
        write(json.loads((args.output_dir / "bench.json").read_text()), args.output_dir, rewrite_json=False)
        return 0
    seconds = args.seconds or (2.0 if args.quick else 6.0)
    documents = args.documents or (50 if args.quick else 500)
    only = {name for name in args.only.split(",") if name}
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp = Path(tmp_name)
        suite = Suite(tmp / "var", routers=args.routers)
        print("starting the suite ...", file=sys.stderr)
        suite.start(report=lambda line: print(f"  {line}", file=sys.stderr))
        try:
            results, extra = run(Bench(suite, tmp, seconds), args.quick, only, documents)
        finally:
            suite.stop()
    report = {
        "machine": br.machine(), "started": started,
        "load_average": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
        "setup": {"quick": args.quick, "seconds_per_point": seconds, "router_replicas": args.routers,
                  "max_tokens": MAX_TOKENS, "top_k": TOP_K, **extra,
                  "models": "CPU stand-ins (light 1 ms/token, full 4 ms/token)",
                  "path": "Envoy (authz, global rate limit in Redis) -> router -> guardrails, cache, retrieval, "
                          "generation -> Triton",
                  "method": "closed-loop ramp of connections for saturation; 25 % and 50 % held by h2load --rps "
                            "(w1) or a pause before each wrk request (w1_json, w2a, w2b) on twice the connections "
                            "the rate needs at the 1-connection latency, reached rate reported; w3 and mixed: "
                            "nearest ramp point."},
        "workloads": results,
    }
    write(report, args.output_dir)
    return 0


def write(report: dict, out_dir: Path, rewrite_json: bool = True) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if rewrite_json:
        (out_dir / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "bench.md").write_text(br.markdown(report))
    written = br.plots(report, out_dir)
    names = ["bench.json"] * rewrite_json + ["bench.md"] + [p.name for p in written]
    print(f"wrote {', '.join(names)} in {out_dir}")


if __name__ == "__main__":
    sys.exit(main())
