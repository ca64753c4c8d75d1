"""Routing evaluation (`make eval-routing`): cache, tiers and cost on a mixed workload.

Runs the real processes (Triton with the CPU stand-ins, generation, retrieval for
embeddings, guardrails, router with in-process cache) and talks to the router over
gRPC as a client would:
  1. tunes the semantic-cache threshold on evals/data/routing_train.jsonl only:
     the lowest similarity above every training negative that passes the lexical
     guards (services/router/similarity.py), reported beside the configured one;
  2. sends evals/data/routing_eval.jsonl in order (simple and complex questions,
     exact repeats, paraphrases, and near-miss negatives that ask something
     different) for a tenant with the semantic cache on;
  3. sends the same requests pinned to the full model with the cache bypassed:
     the cost of serving everything with the full model.
Guardrails check every request with injection blocking off (scores reported only),
so that guardrails' own false positives, which eval-guardrails measures, do not
remove workload items. Writes reports/routing.json and prints a table. Stand-in models answer, so costs
come from their token counts and the configured price table; what is measured is
the routing (shares, cache hits, wrong hits, overhead), not answer quality.

A semantic hit is wrong when its text is not the answer first given to the
question it paraphrases: every hit on a negative is wrong, as is a paraphrase
answered with another question's text.
"""

import argparse
import json
import math
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import yaml  # noqa: E402
from llmsuite.inference.v1 import inference_pb2 as pb, inference_pb2_grpc  # noqa: E402

from evals.stats import percentile  # noqa: E402
from services.router.config import RouterSettings  # noqa: E402
from services.router.similarity import same_question  # noqa: E402
from tests.harness import ServiceProcess, free_port, service_env, start_service  # noqa: E402
from tests.stack_fixtures import start_generation, start_triton  # noqa: E402

DATA = REPO / "evals" / "data"
TENANT = "eval"
MAX_TOKENS = 64
KINDS = ("simple", "complex", "repeat", "paraphrase", "negative")


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def tune_threshold(train: list[dict]) -> dict:
    """Threshold from the training pairs: just above the most similar negative the guards let through."""
    from services.embedding.embedder import Embedder

    # What the router's Embed calls get from the retrieval service: fp32 all-MiniLM-L6-v2.
    embedder = Embedder()
    a = embedder.embed([row["a"] for row in train])
    b = embedder.embed([row["b"] for row in train])
    similarity = (a * b).sum(axis=1)
    guarded = [same_question(row["a"], row["b"]) for row in train]
    negatives = [float(s) for s, row, ok in zip(similarity, train, guarded) if not row["same"] and ok]
    highest_negative = max(negatives, default=0.0)
    threshold = math.ceil((highest_negative + 0.005) * 100) / 100
    positives = [(float(s), ok) for s, row, ok in zip(similarity, train, guarded) if row["same"]]
    recall = sum(1 for s, ok in positives if ok and s >= threshold) / max(len(positives), 1)
    stopped = sum(1 for row, ok in zip(train, guarded) if not row["same"] and not ok)
    return {
        "threshold": threshold,
        "pairs": len(train),
        "negatives_stopped_by_guards": stopped,
        "highest_negative_similarity_past_guards": round(highest_negative, 4),
        "paraphrase_recall_at_threshold": round(recall, 3),
    }


class Stack:
    """Triton, generation, retrieval, guardrails and a router on free ports, in a temporary directory."""

    def __init__(self, work: Path):
        self.work = work
        self.logs = work / "logs"
        self.processes: list[ServiceProcess] = []

    def start(self) -> int:
        triton, triton_port = start_triton(self.logs)
        self.processes.append(triton)
        generation, generation_port = start_generation(self.logs, triton_port)
        self.processes.append(generation)
        ports = {"retrieval": free_port(), "guardrails": free_port()}
        settings = {
            "retrieval": {"port": ports["retrieval"], "metrics_port": free_port(),
                          "qdrant_path": str(self.work / "qdrant")},
            "guardrails": {"port": ports["guardrails"], "metrics_port": free_port(),
                           "blank_model_dir": str(self.work / "spacy-blank")},
        }
        # Guardrails check every request, but injection scores are only reported: their
        # false positives are measured by eval-guardrails and would remove workload items here.
        guardrails_config = self.work / "guardrails.yaml"
        guardrails_config.write_text(yaml.safe_dump({"guardrails": {
            "policies": {"default": {"injection_action": "allow"}}}}))
        side = [ServiceProcess(name, [sys.executable, "-m", f"services.{name}"], self.logs,
                               env={**service_env(name, values), "LLMSUITE_CONFIG": str(guardrails_config)})
                for name, values in settings.items()]
        for process in side:
            self.processes.append(process.start())
        for process in side:
            process.wait_grpc_healthy(ports[process.name], timeout=180)
        config = self.work / "router.yaml"
        config.write_text(yaml.safe_dump({"router": {
            "tenants": {"default": {}, TENANT: {"semantic_cache": True}},
        }}))
        router, port = start_service("router", "router", {
            "generation_url": f"127.0.0.1:{generation_port}",
            "retrieval_url": f"127.0.0.1:{ports['retrieval']}",
            "guardrails_url": f"127.0.0.1:{ports['guardrails']}",
        }, self.logs, env={"LLMSUITE_CONFIG": str(config)})
        self.processes.append(router)
        return port

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def send(stub, prompt: str, **fields) -> tuple[pb.GenerateResponse | None, str]:
    request = pb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParams(max_tokens=MAX_TOKENS), **fields)
    try:
        return stub.Generate(request, timeout=60, metadata=[("x-llmsuite-tenant", TENANT)]), ""
    except grpc.RpcError as err:
        return None, f"{err.code().name}: {err.details()}"


def run_workload(stub, workload: list[dict]) -> list[dict]:
    results = []
    answers: dict[str, str] = {}
    for item in workload:
        started = time.perf_counter()
        reply, error = send(stub, item["prompt"])
        latency_ms = (time.perf_counter() - started) * 1000
        row = {"id": item["id"], "kind": item["kind"], "of": item.get("of", ""), "error": error,
               "latency_ms": round(latency_ms, 2)}
        if reply is not None:
            row.update(tier=pb.Tier.Name(reply.tier), model=reply.model,
                       cache=pb.CacheStatus.Name(reply.cache_status), cost_usd=reply.cost_usd,
                       overhead_ms=round(reply.overhead_ms, 3), degraded=list(reply.degraded_reasons))
            if reply.cache_status == pb.CACHE_STATUS_HIT_SEMANTIC:
                expected = answers.get(item.get("of", ""))
                row["semantic_hit_correct"] = item["kind"] == "paraphrase" and reply.text == expected
            answers.setdefault(item["id"], reply.text)
        results.append(row)
    return results


def run_all_full(stub, workload: list[dict]) -> list[float | None]:
    """Cost of each request served by the full model, cache bypassed (4 at a time); None when refused."""
    def one(item):
        reply, _error = send(stub, item["prompt"], tier=pb.TIER_FULL, cache_policy=pb.CACHE_POLICY_BYPASS)
        return None if reply is None else reply.cost_usd
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, workload))


def _ms(values: list[float], q: float) -> float:
    return round(percentile(values, q), 3)


def summarise(results: list[dict], baseline: list[float | None], tuning: dict, workload_path: Path) -> dict:
    answered = [r for r in results if not r["error"]]
    by = Counter()
    for row in answered:
        if row["cache"] == "CACHE_STATUS_HIT_EXACT":
            by["cache_exact"] += 1
        elif row["cache"] == "CACHE_STATUS_HIT_SEMANTIC":
            by["cache_semantic"] += 1
        elif row["tier"] == "TIER_LIGHT":
            by["light"] += 1
        else:
            by["full"] += 1
    total = max(len(answered), 1)
    # Costs compare the requests both runs answered (input guardrails may refuse some).
    both = [(row, full) for row, full in zip(results, baseline) if not row["error"] and full is not None]
    routed_cost = sum(row["cost_usd"] for row, _ in both)
    all_full = sum(full for _, full in both)
    semantic_hits = [row for row in answered if row["cache"] == "CACHE_STATUS_HIT_SEMANTIC"]
    negatives = [row for row in answered if row["kind"] == "negative"]
    paraphrases = [row for row in answered if row["kind"] == "paraphrase"]
    tiers_by_kind = {kind: dict(Counter(row["tier"] for row in answered if row["kind"] == kind)) for kind in KINDS}
    generated = [row["overhead_ms"] for row in answered if row["tier"] != "TIER_CACHE"]
    cached = [row["overhead_ms"] for row in answered if row["tier"] == "TIER_CACHE"]
    return {
        "workload": {"file": str(workload_path.relative_to(REPO)), "requests": len(results),
                     "by_kind": dict(Counter(row["kind"] for row in results)), "max_tokens": MAX_TOKENS},
        "errors": [{"id": row["id"], "error": row["error"]} for row in results if row["error"]],
        "answered_by": dict(by),
        "share": {key: round(by[key] / total, 3) for key in ("cache_exact", "cache_semantic", "light", "full")},
        "tier_by_kind": tiers_by_kind,
        "cost_usd": {
            "requests_compared": len(both),
            "routed": round(routed_cost, 6),
            "all_full_model": round(all_full, 6),
            "savings": round(1 - routed_cost / all_full, 3) if all_full else 0.0,
        },
        "semantic_cache": {
            "threshold_configured": RouterSettings().semantic_threshold,
            "tuning_on_train": tuning,
            "hits": len(semantic_hits),
            "paraphrases_answered_from_cache": sum(1 for row in paraphrases if row["cache"] == "CACHE_STATUS_HIT_SEMANTIC"),
            "paraphrases": len(paraphrases),
            "wrong_hits": sum(1 for row in semantic_hits if not row.get("semantic_hit_correct")),
            "wrong_hits_on_negatives": sum(1 for row in negatives if row["cache"] == "CACHE_STATUS_HIT_SEMANTIC"),
            "negatives": len(negatives),
        },
        "overhead_ms": {
            "generated": {"p50": _ms(generated, 50), "p99": _ms(generated, 99), "n": len(generated)},
            "cache_hits": {"p50": _ms(cached, 50), "p99": _ms(cached, 99), "n": len(cached)},
        },
        "requests": results,
        "notes": "Stand-in models (deterministic placeholder text) answer; costs use the configured price table and "
                 "the stand-ins' token counts. Guardrails check every request with injection blocking off (scores "
                 "reported only). The semantic threshold is tuned on routing_train.jsonl only; the workload's "
                 "negatives are report-only.",
    }


def print_table(report: dict) -> None:
    share, cost, semantic = report["share"], report["cost_usd"], report["semantic_cache"]
    print(f"requests: {report['workload']['requests']} ({report['workload']['by_kind']}), errors: {len(report['errors'])}")
    print(f"answered by   cache exact {share['cache_exact']:.1%}  cache semantic {share['cache_semantic']:.1%}  "
          f"light {share['light']:.1%}  full {share['full']:.1%}")
    print(f"cost          routed ${cost['routed']:.6f}  all-full ${cost['all_full_model']:.6f}  "
          f"savings {cost['savings']:.1%}")
    print(f"semantic      threshold {semantic['threshold_configured']} (train-tuned "
          f"{semantic['tuning_on_train']['threshold']}), paraphrase hits "
          f"{semantic['paraphrases_answered_from_cache']}/{semantic['paraphrases']}, wrong hits "
          f"{semantic['wrong_hits']} ({semantic['wrong_hits_on_negatives']} on {semantic['negatives']} negatives)")
    overhead = report["overhead_ms"]
    print(f"overhead ms   generated p50 {overhead['generated']['p50']} p99 {overhead['generated']['p99']}; "
          f"cache hits p50 {overhead['cache_hits']['p50']} p99 {overhead['cache_hits']['p99']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, default=DATA / "routing_train.jsonl")
    parser.add_argument("--workload", type=Path, default=DATA / "routing_eval.jsonl")
    parser.add_argument("--output", type=Path, default=REPO / "reports" / "routing.json")
    args = parser.parse_args()

    tuning = tune_threshold(read_jsonl(args.train))
    print(f"semantic threshold tuned on {args.train.name}: {tuning}")
    workload = read_jsonl(args.workload)
    with tempfile.TemporaryDirectory(prefix="eval-routing-") as work:
        stack = Stack(Path(work))
        try:
            port = stack.start()
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = inference_pb2_grpc.InferenceServiceStub(channel)
                results = run_workload(stub, workload)
                baseline = run_all_full(stub, workload)
        finally:
            stack.stop()
    report = summarise(results, baseline, tuning, args.workload)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
