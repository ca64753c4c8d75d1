"""Does retrieval ground the real model's answers? (`make eval-answers`, reports/answers.json)

Starts everything `make run` starts, with the real CPU models (SmolLM2-135M-Instruct
on llama.cpp behind Triton), on free ports. Ingests a small document collection
about a fictional company (evals/data/answers_docs.jsonl, 20 short documents, written
for this evaluation) through the edge, then asks 60 questions with short known
answers (evals/data/answers_questions.jsonl) through the edge, as a client would:
Envoy (authz, rate limits) -> router (guardrails, retrieval, prompt) -> generation ->
Triton. Every question is asked without retrieval and with it
(`retrieval.collection`, top 3 chunks), greedy, cache bypassed, under two prompt
templates: the router's default, and one that asks for a one-sentence answer citing
the document's number.

Per template and mode it reports:
  - answer rate: the answer contains an expected fact (word-bounded, case-insensitive);
    the facts are made up, so without documents a right answer is a lucky guess;
  - with retrieval: the share of questions whose document was retrieved, the answer
    rate when it was, and the share of answers citing a retrieved source ([n] or its id);
  - time to first token at the client (first streamed text; output guardrails hold
    back a window of text, so a client sees it later than the model produced it) and
    output tokens per second of the whole request, through the whole stack;
  - time to first token and decoding tokens/s at the generation service (its
    gen_ai_server_* histograms, averaged over the pass): the model behind Triton.
Timing is for the machine it runs on; the report records its load average.

    .venv/bin/python evals/answers.py [--output reports/answers.json]
"""

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import yaml  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from llmsuite.generation.v1 import generation_pb2, generation_pb2_grpc  # noqa: E402
from llmsuite.inference.v1 import inference_pb2 as pb, inference_pb2_grpc  # noqa: E402
from llmsuite.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc  # noqa: E402

from evals.stats import percentile  # noqa: E402
from gateway.keys import add_key  # noqa: E402
from services.stack.stack import Ports, Stack  # noqa: E402
from services.triton.launcher import DEFAULT_MODEL_REPOSITORY  # noqa: E402

DATA = REPO / "evals" / "data"
COLLECTION = "larkspur"
MAX_TOKENS = 64
TOP_K = 3
# Tenant -> the template its requests get. `default` is the router's own template;
# `cite` asks for the short, sourced answer a small model can give.
CITE_TEMPLATE = ("You are the assistant of Larkspur Analytics. Answer the question in one short sentence. "
                 "When documents are given, answer only from them and name the document you used by its "
                 "number, like [1]. If they do not contain the answer, say that you do not know.")
TENANTS = {"default": "default", "cite": "cite"}


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def contains_fact(text: str, answers: list[str]) -> bool:
    return any(re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", text, re.IGNORECASE) for answer in answers)


def cites(text: str, sources: list[pb.Source]) -> bool:
    numbers = {str(n) for n in range(1, len(sources) + 1)}
    if any(number in numbers for number in re.findall(r"\[(\d+)\]", text)):
        return True
    return any(source.document_id in text for source in sources)


def config(path: Path) -> None:
    path.write_text(yaml.safe_dump({"router": {
        "templates": {"default": {}, "cite": {"version": "answers-1", "system": CITE_TEMPLATE}},
        "tenants": {"default": {}, "cite": {"template": "cite"}},
    }}))


def ingest(channel, auth, docs: list[dict]) -> int:
    stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
    reply = stub.Upsert(retrieval_pb2.UpsertRequest(collection=COLLECTION, documents=[
        retrieval_pb2.Document(id=doc["id"], title=doc["title"], text=doc["text"]) for doc in docs]),
        timeout=120, metadata=auth)
    return reply.chunks


def ask(stub, auth, question: dict, rag: bool) -> dict:
    request = pb.GenerateStreamRequest(
        prompt=question["question"], tier=pb.TIER_LIGHT, cache_policy=pb.CACHE_POLICY_BYPASS,
        sampling=pb.SamplingParams(max_tokens=MAX_TOKENS, temperature=0),
        retrieval=pb.RetrievalOptions(collection=COLLECTION if rag else "", top_k=TOP_K if rag else 0))
    started = time.perf_counter()
    first = None
    try:
        for message in stub.GenerateStream(request, timeout=120, metadata=auth):
            if message.text_delta and first is None:
                first = time.perf_counter()
            if message.HasField("final"):
                final = message.final
    except grpc.RpcError as err:
        return {"id": question["id"], "error": f"{err.code().name}: {err.details()}"}
    ended = time.perf_counter()
    tokens = final.usage.output_tokens
    retrieved = [source.document_id for source in final.sources]
    return {
        "id": question["id"], "question": question["question"], "expected": question["answers"],
        "answer": final.text, "correct": contains_fact(final.text, question["answers"]),
        "retrieved": retrieved, "document_retrieved": question["document"] in retrieved,
        "cites_source": cites(final.text, list(final.sources)),
        "degraded": list(final.degraded_reasons), "output_tokens": tokens,
        "ttft_ms": round(((first or ended) - started) * 1000, 1),
        "total_ms": round((ended - started) * 1000, 1),
        # Text after the first piece arrives in bursts (the output check releases it
        # in windows), so only the whole request's rate means something here.
        "tokens_per_s": round(tokens / (ended - started), 1),
    }


def share(rows: list[dict], key: str) -> float:
    return round(sum(1 for row in rows if row.get(key)) / len(rows), 3) if rows else 0.0


def generation_histograms(port: int) -> dict[str, float]:
    """Sums and counts of the generation service's latency histograms for the light model."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name.startswith(("gen_ai_server_time_to_first_token_seconds_",
                                        "gen_ai_server_time_per_output_token_seconds_"))
                    and sample.labels.get("gen_ai_request_model") == "light"
                    and sample.name.endswith(("_sum", "_count"))):
                values[sample.name] = sample.value
    return values


def generation_side(before: dict[str, float], after: dict[str, float]) -> dict:
    def mean(name: str) -> float:
        count = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
        return (after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)) / count if count else 0.0

    per_token = mean("gen_ai_server_time_per_output_token_seconds")
    return {"ttft_ms_mean": round(mean("gen_ai_server_time_to_first_token_seconds") * 1000, 1),
            "decode_tokens_per_s": round(1 / per_token, 1) if per_token else 0.0}


def summarise(rows: list[dict], rag: bool, generation: dict) -> dict:
    answered = [row for row in rows if "error" not in row]
    ttft = [row["ttft_ms"] for row in answered]
    rates = [row["tokens_per_s"] for row in answered]
    summary = {
        "questions": len(rows), "errors": len(rows) - len(answered),
        "answer_rate": share(answered, "correct"),
        "client_ttft_ms": {"p50": round(percentile(ttft, 50), 1), "p90": round(percentile(ttft, 90), 1)},
        "request_output_tokens_per_s": {"p50": round(percentile(rates, 50), 1),
                                        "p10": round(percentile(rates, 10), 1)},
        "output_tokens_mean": round(sum(row["output_tokens"] for row in answered) / max(len(answered), 1), 1),
        "at_generation": generation,
    }
    if rag:
        hit = [row for row in answered if row["document_retrieved"]]
        summary.update({
            "document_retrieved": share(answered, "document_retrieved"),
            "answer_rate_when_retrieved": share(hit, "correct"),
            "cites_a_retrieved_source": share(answered, "cites_source"),
        })
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=REPO / "reports" / "answers.json")
    args = parser.parse_args()
    docs = read_jsonl(DATA / "answers_docs.jsonl")
    questions = read_jsonl(DATA / "answers_questions.jsonl")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="eval-answers-") as tmp_name:
        tmp = Path(tmp_name)
        config(tmp / "answers.yaml")
        os.environ["LLMSUITE_CONFIG"] = str(tmp / "answers.yaml")
        keys_file = tmp / "var" / "gateway" / "keys.yaml"
        keys_file.parent.mkdir(parents=True)
        scopes = ["inference", "retrieval:read", "retrieval:write"]
        keys = {tenant: add_key(keys_file, f"answers-{tenant}", tenant, scopes) for tenant in TENANTS}
        stack = Stack(ports=Ports.free(), var_dir=tmp / "var", model_repository=DEFAULT_MODEL_REPOSITORY)
        print("starting the stack (real CPU models) ...", file=sys.stderr)
        stack.start(report=lambda line: print(f"  {line}", file=sys.stderr))
        try:
            load_before = os.getloadavg()
            with grpc.insecure_channel(f"127.0.0.1:{stack.ports.generation}") as channel:
                models = generation_pb2_grpc.GenerationServiceStub(channel).ListModels(
                    generation_pb2.ListModelsRequest(), timeout=10).models
            with grpc.insecure_channel(f"127.0.0.1:{stack.ports.envoy}") as channel:
                stub = inference_pb2_grpc.InferenceServiceStub(channel)
                for tenant, template in TENANTS.items():
                    auth = (("authorization", f"Bearer {keys[tenant]}"),)
                    chunks = ingest(channel, auth, docs)
                    for rag in (False, True):
                        mode = "with_rag" if rag else "without_rag"
                        print(f"template {template}, {mode}: {len(questions)} questions", file=sys.stderr)
                        before = generation_histograms(stack.ports.generation_metrics)
                        rows = [ask(stub, auth, question, rag) for question in questions]
                        generation = generation_side(before, generation_histograms(stack.ports.generation_metrics))
                        results.setdefault(template, {"chunks_ingested": chunks})[mode] = {
                            "summary": summarise(rows, rag, generation), "rows": rows}
            load_after = os.getloadavg()
        finally:
            stack.stop()
    report = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in load_after]},
        "setup": {
            "models": {m.name: m.description for m in models},
            "model_repository": str(DEFAULT_MODEL_REPOSITORY.relative_to(REPO)),
            "path": "Envoy (authz, rate limits) -> router (guardrails, retrieval, prompt) -> generation -> Triton",
            "documents": len(docs), "questions": len(questions), "collection": COLLECTION, "top_k": TOP_K,
            "max_tokens": MAX_TOKENS, "temperature": 0, "tier": "light", "cite_template": CITE_TEMPLATE,
        },
        "templates": {template: {"chunks_ingested": data["chunks_ingested"],
                                 "without_rag": data["without_rag"]["summary"],
                                 "with_rag": data["with_rag"]["summary"]}
                      for template, data in results.items()},
        "rows": {template: {mode: data[mode]["rows"] for mode in ("without_rag", "with_rag")}
                 for template, data in results.items()},
        "notes": "The documents describe a made-up company, so the facts cannot come from the model's training. "
                 "SmolLM2-135M-Instruct is a very small model: answers are fluent but often wrong or padded. "
                 "An answer counts when it contains an expected fact; citing counts an [n] that points at a "
                 "retrieved document, or a retrieved document's id.",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    for template, data in report["templates"].items():
        without, with_rag = data["without_rag"], data["with_rag"]
        print(f"{template:8} answer rate without RAG {without['answer_rate']:.1%}, "
              f"with RAG {with_rag['answer_rate']:.1%} (document retrieved {with_rag['document_retrieved']:.1%}, "
              f"cites a source {with_rag['cites_a_retrieved_source']:.1%}); "
              f"with RAG: client TTFT p50 {with_rag['client_ttft_ms']['p50']} ms, "
              f"{with_rag['request_output_tokens_per_s']['p50']} tokens/s per request; at generation TTFT "
              f"{with_rag['at_generation']['ttft_ms_mean']} ms, {with_rag['at_generation']['decode_tokens_per_s']} "
              f"tokens/s decoding; errors {without['errors'] + with_rag['errors']}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
