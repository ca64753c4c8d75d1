"""SciFact evaluation of the retrieval service (`make eval-retrieval`).

Runs the real service (`python -m services.retrieval`, embedded Qdrant in a
temporary directory) and talks to it over gRPC only, as a client would:
  1. ingests corpus.jsonl through UpsertStream and reads the service's own
     counters (chunks, embedded tokens, embedding time) from its /metrics;
  2. nDCG@10 and Recall@100 per mode (dense, sparse, hybrid): Search with
     top_k=100 and group_by_document (a document scores as its best chunk);
  3. search latency per mode at top_k=10, measured at the client, so query
     embedding, gRPC and the store are all included;
  4. the same with documents embedded in fp32 (quantize_ingest=false), to report
     what int8 ingest costs in quality and gains in speed (queries are fp32 in both);
  5. the ceiling for ingest: the bare int8 model, in this process with the service
     stopped, on a sample of the same chunks (tokens/s).
Writes reports/retrieval.json and prints a table.

Test queries are report-only. `--split train` runs the same on the train queries,
and `--tune` grid-searches the BM25 and fusion settings in-process on the train
queries only (how the defaults in services/retrieval/config.py were chosen).
Data: $LLMSUITE_DATA_DIR/retrieval/scifact, else ../shared/data next to the repo.
"""

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from llmsuite.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from evals.stats import percentile  # noqa: E402
from services.cli.retrieval import batches, read_documents  # noqa: E402
from tests.harness import free_port, start_service  # noqa: E402

MODES = {"dense": retrieval_pb2.SEARCH_MODE_DENSE, "sparse": retrieval_pb2.SEARCH_MODE_SPARSE,
         "hybrid": retrieval_pb2.SEARCH_MODE_HYBRID}
COLLECTION = "scifact"
TENANT = (("x-llmsuite-tenant", "eval"),)
INGEST_BATCH = 64
LATENCY_WARMUP = 10
# The bare-model ceiling embeds the chunks of every 5th document (about 400,000 tokens).
BARE_MODEL_EVERY = 5


def data_dir() -> Path:
    root = os.environ.get("LLMSUITE_DATA_DIR")
    return (Path(root) if root else REPO.parent / "shared" / "data") / "retrieval" / "scifact"


def load_queries(path: Path) -> dict[str, str]:
    with path.open(encoding="utf-8") as handle:
        return {item["_id"]: item["text"] for item in map(json.loads, handle) if item}


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as handle:
        next(handle)  # header
        for line in handle:
            query_id, doc_id, score = line.split()
            qrels.setdefault(query_id, {})[doc_id] = int(score)
    return qrels


def ndcg_at(ranked: list[str], relevant: dict[str, int], k: int = 10) -> float:
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sum(gain / math.log2(i + 2) for i, gain in enumerate(sorted(relevant.values(), reverse=True)[:k]))
    return dcg / ideal if ideal else 0.0


def recall_at(ranked: list[str], relevant: dict[str, int], k: int = 100) -> float:
    wanted = {doc for doc, gain in relevant.items() if gain > 0}
    return len(wanted & set(ranked[:k])) / len(wanted) if wanted else 0.0


# The service over gRPC


def scrape(metrics_port: int) -> dict[str, float]:
    """Sample name (with labels) -> value, from the service's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def ingest(stub, corpus_path: Path, metrics_port: int) -> dict:
    documents = read_documents(corpus_path)
    before = scrape(metrics_port)
    start = time.perf_counter()
    last = None
    for last in stub.UpsertStream(batches(COLLECTION, documents, INGEST_BATCH), metadata=TENANT, timeout=7200):
        print(f"\r  ingested {last.documents_done}/{len(documents)} documents, {last.chunks_done} chunks",
              end="", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    print(file=sys.stderr)
    after = scrape(metrics_port)
    tokens = after["llmsuite_retrieval_tokens_embedded_total"] - before.get("llmsuite_retrieval_tokens_embedded_total", 0)
    embed_seconds = (after["llmsuite_retrieval_embed_seconds_sum{source=ingest}"]
                     - before.get("llmsuite_retrieval_embed_seconds_sum{source=ingest}", 0))
    return {
        "documents": last.documents_done, "chunks": last.chunks_done, "tokens": int(tokens),
        "seconds": round(seconds, 1), "chunks_per_s": round(last.chunks_done / seconds, 1),
        "tokens_per_s": round(tokens / seconds), "embed_seconds": round(embed_seconds, 1),
        "embed_tokens_per_s": round(tokens / embed_seconds),
    }


def bare_model(corpus_path: Path, every: int) -> dict:
    """Ceiling for ingest: the int8 embedder alone, in this process, on the service's chunks.

    The chunks of every `every`-th document, made by the service's own chunker and
    settings, embedded in length-sorted batches of `ingest_batch_size` as the service
    does, with the same token count (model input tokens, padding excluded). No gRPC,
    no sparse encoding, no store: what the model itself allows on this CPU.
    """
    from services.embedding.embedder import Embedder
    from services.retrieval.config import RetrievalSettings
    from services.retrieval.ingest import DocumentChunker

    settings = RetrievalSettings()
    embedder = Embedder(quantize=True)
    chunker = DocumentChunker.for_embedder(embedder, settings)
    documents = read_documents(corpus_path)[::every]
    chunks = sorted((chunk for doc in documents for chunk in chunker.split(doc)), key=lambda chunk: chunk.tokens)
    embedder.embed([chunks[-1].embed_input])  # first-pass initialisation, as the service's warm-up does
    size = settings.ingest_batch_size
    start = time.perf_counter()
    for begin in range(0, len(chunks), size):
        embedder.embed([chunk.embed_input for chunk in chunks[begin:begin + size]])
    seconds = time.perf_counter() - start
    tokens = sum(chunk.tokens for chunk in chunks)
    return {"documents": len(documents), "chunks": len(chunks), "tokens": tokens,
            "batch_size": size, "seconds": round(seconds, 1), "tokens_per_s": round(tokens / seconds),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def rank_documents(stub, query: str, mode: str, top_k: int) -> list[str]:
    response = stub.Search(retrieval_pb2.SearchRequest(collection=COLLECTION, query=query, top_k=top_k, mode=MODES[mode],
                                                       group_by_document=True), metadata=TENANT, timeout=30)
    return [hit.document_id for hit in response.hits]


def quality(stub, queries: dict[str, str], qrels: dict[str, dict[str, int]], mode: str) -> dict:
    ndcg, recall = [], []
    for query_id, relevant in qrels.items():
        ranked = rank_documents(stub, queries[query_id], mode, 100)
        ndcg.append(ndcg_at(ranked, relevant, 10))
        recall.append(recall_at(ranked, relevant, 100))
    return {"ndcg@10": round(statistics.fmean(ndcg), 4), "recall@100": round(statistics.fmean(recall), 4)}


def latency(stub, queries: list[str], mode: str) -> dict:
    for query in queries[:LATENCY_WARMUP]:
        rank_documents(stub, query, mode, 10)
    times = []
    for query in queries:
        start = time.perf_counter()
        stub.Search(retrieval_pb2.SearchRequest(collection=COLLECTION, query=query, top_k=10, mode=MODES[mode]),
                    metadata=TENANT, timeout=30)
        times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": round(percentile(times, 50), 1), "p99_ms": round(percentile(times, 99), 1),
            "mean_ms": round(statistics.fmean(times), 1)}


def run_service(tmp: Path, quantize: bool, split: str, modes: list[str], with_latency: bool) -> dict:
    data = data_dir()
    queries = load_queries(data / f"queries_{split}.jsonl")
    qrels = load_qrels(data / f"qrels_{split}.tsv")
    label = "int8" if quantize else "fp32"
    store = tmp / f"qdrant-{label}"
    metrics_port = free_port()
    # The query-embedding cache is off: every timed search embeds its query (the
    # latency queries were all searched before, in the quality pass).
    process, port = start_service("retrieval", "retrieval", {
        "qdrant_path": store, "quantize_ingest": str(quantize).lower(), "metrics_port": metrics_port,
        "query_cache_entries": 0}, tmp, name=f"retrieval-{label}")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
            print(f"[{label}] ingesting {data / 'corpus.jsonl'}", file=sys.stderr)
            # The machine is shared: the load average shows how much others competed for the CPU.
            result = {"load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                      "ingest": ingest(stub, data / "corpus.jsonl", metrics_port), "modes": {}}
            for mode in modes:
                print(f"[{label}] {mode}: quality on {len(qrels)} {split} queries", file=sys.stderr)
                result["modes"][mode] = quality(stub, queries, qrels, mode)
                if with_latency:
                    result["modes"][mode]["latency"] = latency(stub, [queries[q] for q in qrels], mode)
    finally:
        process.stop()
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def table(report: dict) -> str:
    int8 = report["int8"]
    fp32 = report.get("fp32")
    lines = [f"SciFact {report['split']} ({report['queries']} queries, {int8['ingest']['documents']} documents, "
             f"{int8['ingest']['chunks']} chunks); embedded Qdrant, int8 embedder",
             "", "| mode | nDCG@10 | Recall@100 | p50 ms | p99 ms | fp32 nDCG@10 | fp32 Recall@100 |",
             "|---|---|---|---|---|---|---|"]
    for mode, values in int8["modes"].items():
        lat = values.get("latency", {})
        other = (fp32 or {}).get("modes", {}).get(mode, {})
        lines.append(f"| {mode} | {values['ndcg@10']:.4f} | {values['recall@100']:.4f} | {lat.get('p50_ms', '-')} | "
                     f"{lat.get('p99_ms', '-')} | {other.get('ndcg@10', '-')} | {other.get('recall@100', '-')} |")
    lines.append("")
    for label in ("int8", "fp32"):
        if label in report:
            ing = report[label]["ingest"]
            lines.append(f"ingest {label}: {ing['chunks_per_s']} chunks/s, {ing['tokens_per_s']} tokens/s end to end "
                         f"({ing['tokens']} tokens in {ing['seconds']} s); embedding alone {ing['embed_tokens_per_s']} "
                         f"tokens/s")
    bare = int8.get("bare_model")
    if bare:
        lines.append(f"bare int8 model (no service, {bare['chunks']} of the same chunks, batches of "
                     f"{bare['batch_size']}): {bare['tokens_per_s']} tokens/s; target 8000 tokens/s end to end")
    return "\n".join(lines)


def evaluate(args: argparse.Namespace) -> int:
    qrels = load_qrels(data_dir() / f"qrels_{args.split}.tsv")
    report = {"split": args.split, "queries": len(qrels), "machine": f"{os.cpu_count()} CPUs",
              "latency_note": "client-side Search over gRPC, top_k=10, sequential, query embedding included "
                              "(query_cache_entries=0: every search embeds its query)",
              "quality_note": "Search top_k=100 with group_by_document; a document scores as its best chunk"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="eval-retrieval-") as tmp:
        report["int8"] = run_service(Path(tmp), True, args.split, list(MODES), with_latency=True)
        print(f"[int8] bare model on the chunks of every {BARE_MODEL_EVERY}th document", file=sys.stderr)
        report["int8"]["bare_model"] = bare_model(data_dir() / "corpus.jsonl", BARE_MODEL_EVERY)
        # Written now too, so the int8 results survive an interrupted fp32 run.
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if not args.no_fp32:
            report["fp32"] = run_service(Path(tmp), False, args.split, ["dense", "hybrid"], with_latency=True)
    if "fp32" in report:
        report["int8_cost"] = {mode: {"ndcg@10": round(report["int8"]["modes"][mode]["ndcg@10"]
                                                       - report["fp32"]["modes"][mode]["ndcg@10"], 4)}
                               for mode in report["fp32"]["modes"]}
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(table(report))
    print(f"\nwrote {out}")
    return 0


# Tuning, in-process, on the train queries only


def tune(args: argparse.Namespace) -> int:
    from scipy import sparse as sp

    from services.embedding.embedder import Embedder
    from services.retrieval.config import RetrievalSettings
    from services.retrieval.ingest import DocumentChunker
    from services.retrieval.sparse import SparseEncoder

    data = data_dir()
    queries = load_queries(data / "queries_train.jsonl")
    qrels = load_qrels(data / "qrels_train.tsv")
    query_ids = list(qrels)
    settings = RetrievalSettings()
    embedder = Embedder(quantize=True)  # documents, as the service ingests them
    chunker = DocumentChunker.for_embedder(embedder, settings)
    docs = read_documents(data / "corpus.jsonl")
    chunks, owner = [], []
    for doc in docs:
        for chunk in chunker.split(doc):
            chunks.append(chunk.embed_input)
            owner.append(doc.id)
    owner = np.asarray(owner)
    print(f"{len(docs)} documents, {len(chunks)} chunks", file=sys.stderr)

    key = hashlib.sha256(json.dumps([chunks, embedder.MODEL_NAME, "onnx-int8-per-channel"]).encode()).hexdigest()[:16]
    cache = REPO / "var" / "eval-cache" / f"scifact-int8-{key}.npy"
    if cache.exists():
        dense = np.load(cache)
    else:
        cache.parent.mkdir(parents=True, exist_ok=True)
        order = np.argsort([len(c) for c in chunks])
        dense = np.zeros((len(chunks), embedder.DIMENSION), dtype=np.float32)
        for begin in range(0, len(order), 16):
            rows = order[begin:begin + 16]
            dense[rows] = embedder.embed([chunks[i] for i in rows])
            print(f"\r  embedded {begin + len(rows)}/{len(chunks)}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        np.save(cache, dense)
    query_dense = Embedder().embed([queries[q] for q in query_ids])
    dense_scores = query_dense @ dense.T

    def doc_metrics(scores: np.ndarray) -> float:
        values = []
        for row, query_id in enumerate(query_ids):
            top = np.argsort(-scores[row])[:400]
            ranked = list(dict.fromkeys(owner[top]))
            values.append(ndcg_at(ranked, qrels[query_id]))
        return statistics.fmean(values)

    print(f"dense nDCG@10 (train) {doc_metrics(dense_scores):.4f}")

    # BM25 grid: term counts once, weights per setting, IDF as Qdrant computes it.
    encoder = SparseEncoder()
    rows, cols, counts, lengths = [], [], [], []
    vocab: dict[int, int] = {}
    for i, text in enumerate(chunks):
        term_counts, length = encoder.counts(text)
        lengths.append(length)
        for index, count in term_counts.items():
            rows.append(i)
            cols.append(vocab.setdefault(index, len(vocab)))
            counts.append(count)
    tf = sp.csr_matrix((counts, (rows, cols)), shape=(len(chunks), len(vocab)), dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.float64)
    df = np.bincount(tf.indices, minlength=len(vocab))
    idf = np.log((len(chunks) - df + 0.5) / (df + 0.5) + 1)
    q_rows, q_cols, q_vals = [], [], []
    for row, query_id in enumerate(query_ids):
        indices, values = encoder.query(queries[query_id])
        for index, value in zip(indices, values):
            if index in vocab:
                q_rows.append(row)
                q_cols.append(vocab[index])
                q_vals.append(value * idf[vocab[index]])
    q = sp.csr_matrix((q_vals, (q_rows, q_cols)), shape=(len(query_ids), len(vocab)))
    best = None
    for k1 in (0.6, 0.9, 1.2, 1.5):
        for b in (0.3, 0.5, 0.75, 0.9):
            for avg_len in (float(np.mean(lengths)), 60.0, 120.0):
                norm = k1 * (1 - b + b * lengths / avg_len)
                w = tf.copy()
                w.data = w.data * (k1 + 1) / (w.data + np.repeat(norm, np.diff(w.indptr)))
                score = doc_metrics((q @ w.T).toarray())
                print(f"  bm25 k1={k1} b={b} avg_len={avg_len:.0f}: nDCG@10 {score:.4f}", file=sys.stderr)
                if best is None or score > best[0]:
                    best = (score, k1, b, avg_len, (q @ w.T).toarray())
    score, k1, b, avg_len, sparse_scores = best
    print(f"best bm25 (train): k1={k1} b={b} avg_len={avg_len:.1f} nDCG@10 {score:.4f}")

    def rrf(k: int, wd: float, ws: float, candidates: int) -> np.ndarray:
        # Qdrant's weighted RRF: sum over sources of 1 / ((rank + 1) / weight + k - 1).
        fused = np.zeros_like(dense_scores)
        for scores, weight in ((dense_scores, wd), (sparse_scores, ws)):
            top = np.argsort(-scores, axis=1)[:, :candidates]
            ranks = np.arange(candidates)
            for row in range(len(query_ids)):
                hit = scores[row, top[row]] > (-np.inf if scores is dense_scores else 0)
                fused[row, top[row][hit]] += 1 / ((ranks[hit] + 1) / weight + k - 1)
        return fused

    best = None
    for k in (2, 10, 30, 60):
        for ws in (0.5, 0.75, 1.0, 1.5, 2.0):
            for candidates in (50, 100):
                score = doc_metrics(rrf(k, 1.0, ws, candidates))
                print(f"  rrf k={k} sparse_weight={ws} candidates={candidates}: nDCG@10 {score:.4f}", file=sys.stderr)
                if best is None or score > best[0]:
                    best = (score, k, ws, candidates)
    print(f"best hybrid (train): rrf_k={best[1]} rrf_sparse_weight={best[2]} hybrid_candidates={best[3]} "
          f"nDCG@10 {best[0]:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=["test", "train"], default="test")
    parser.add_argument("--no-fp32", action="store_true", help="skip the fp32 comparison (halves the run time)")
    parser.add_argument("--out", default=str(REPO / "reports" / "retrieval.json"))
    parser.add_argument("--tune", action="store_true", help="grid-search BM25 and fusion settings on train queries")
    args = parser.parse_args(argv)
    return tune(args) if args.tune else evaluate(args)


if __name__ == "__main__":
    sys.exit(main())
