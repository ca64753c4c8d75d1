"""`llmsuite retrieval ingest|search`: load JSON Lines documents into a collection, query it."""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Iterator

import grpc
from llmsuite.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc
from tqdm import tqdm

from services.cli.common import add_connection_args, call_metadata, channel, describe_error

MODES = {"hybrid": retrieval_pb2.SEARCH_MODE_HYBRID, "dense": retrieval_pb2.SEARCH_MODE_DENSE,
         "sparse": retrieval_pb2.SEARCH_MODE_SPARSE}
# Stay well under the service's 16 MiB message limit when batching large documents.
MAX_BATCH_BYTES = 8 * 1024 * 1024


class InputError(Exception):
    """The input file has a line that is not a document."""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("retrieval", help="ingest documents into a collection and search it")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    ingest = commands.add_parser("ingest", help="store the documents of a JSON Lines file in a collection")
    ingest.add_argument("file", type=Path,
                        help="JSON Lines: one object a line with _id or id, text, optional title and metadata")
    ingest.add_argument("--collection", required=True, help="target collection (created if missing)")
    ingest.add_argument("--batch-size", type=int, default=64, help="documents per stream message (default %(default)s)")
    add_connection_args(ingest)
    # A large load takes minutes; the deadline covers the whole stream.
    ingest.set_defaults(run=run_ingest, timeout=3600.0)

    search = commands.add_parser("search", help="search a collection")
    search.add_argument("query")
    search.add_argument("--collection", required=True)
    search.add_argument("--top-k", type=int, default=10)
    search.add_argument("--mode", choices=sorted(MODES), default="hybrid")
    search.add_argument("--min-score", type=float, default=None, help="score threshold (dense and sparse modes)")
    search.add_argument("--eq", action="append", default=[], metavar="KEY=VALUE", help="metadata KEY equals VALUE")
    search.add_argument("--any", action="append", default=[], metavar="KEY=V1,V2",
                        help="metadata KEY is one of the comma-separated values")
    search.add_argument("--range", action="append", default=[], metavar="KEY=LO:HI",
                        help="numeric metadata KEY within [LO, HI]; either bound may be empty")
    search.add_argument("--per-document", action="store_true", help="at most one hit (the best chunk) per document")
    search.add_argument("--json", action="store_true", help="print hits as JSON Lines")
    add_connection_args(search)
    search.set_defaults(run=run_search)


def read_documents(path: Path) -> list[retrieval_pb2.Document]:
    """All documents of a JSON Lines file; InputError names the first bad line."""
    documents = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{number}: not JSON ({err.msg})") from None
            if not isinstance(item, dict):
                raise InputError(f"{path}:{number}: expected an object")
            doc_id = item.get("_id", item.get("id"))
            if doc_id is None or str(doc_id) == "":
                raise InputError(f"{path}:{number}: no _id or id")
            text = item.get("text")
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"{path}:{number}: text missing or empty")
            metadata = item.get("metadata") or {}
            if not isinstance(metadata, dict):
                raise InputError(f"{path}:{number}: metadata must be an object")
            documents.append(retrieval_pb2.Document(
                id=str(doc_id), title=str(item.get("title") or ""), text=text,
                metadata={str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}))
    return documents


def batches(collection: str, documents: list[retrieval_pb2.Document],
            batch_size: int) -> Iterator[retrieval_pb2.UpsertStreamRequest]:
    batch: list[retrieval_pb2.Document] = []
    size = 0
    for doc in documents:
        doc_size = doc.ByteSize()
        if batch and (len(batch) >= batch_size or size + doc_size > MAX_BATCH_BYTES):
            yield retrieval_pb2.UpsertStreamRequest(collection=collection, documents=batch)
            batch, size = [], 0
        batch.append(doc)
        size += doc_size
    if batch:
        yield retrieval_pb2.UpsertStreamRequest(collection=collection, documents=batch)


def run_ingest(args: argparse.Namespace) -> int:
    try:
        documents = read_documents(args.file)
    except (InputError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not documents:
        print(f"error: {args.file} holds no documents", file=sys.stderr)
        return 2
    start = time.perf_counter()
    chunks = 0
    with channel(args) as chan, tqdm(total=len(documents), unit="doc", file=sys.stderr) as progress:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(chan)
        try:
            for update in stub.UpsertStream(batches(args.collection, documents, args.batch_size),
                                            timeout=args.timeout, metadata=call_metadata(args)):
                progress.update(update.documents_done - progress.n)
                progress.set_postfix(chunks=update.chunks_done)
                chunks = update.chunks_done
        except grpc.RpcError as err:
            progress.close()
            print(describe_error(err), file=sys.stderr)
            print(f"{progress.n} documents were stored before the error", file=sys.stderr)
            return 1
    elapsed = time.perf_counter() - start
    print(f"stored {len(documents)} documents as {chunks} chunks in {args.collection!r} "
          f"in {elapsed:.1f}s ({chunks / elapsed:.1f} chunks/s)")
    return 0


def parse_filters(args: argparse.Namespace) -> list[retrieval_pb2.Condition]:
    conditions = []
    for item in args.eq:
        key, _, value = item.partition("=")
        conditions.append(retrieval_pb2.Condition(key=key, equals=value))
    for item in args.any:
        key, _, values = item.partition("=")
        conditions.append(retrieval_pb2.Condition(key=key, any_of=retrieval_pb2.StringList(values=values.split(","))))
    for item in args.range:
        key, _, bounds = item.partition("=")
        low, _, high = bounds.partition(":")
        try:
            limits = retrieval_pb2.Range(**({"gte": float(low)} if low else {}), **({"lte": float(high)} if high else {}))
        except ValueError:
            raise InputError(f"--range {item!r}: bounds must be numbers, as KEY=LO:HI") from None
        conditions.append(retrieval_pb2.Condition(key=key, range=limits))
    return conditions


def run_search(args: argparse.Namespace) -> int:
    try:
        conditions = parse_filters(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    request = retrieval_pb2.SearchRequest(collection=args.collection, query=args.query, top_k=args.top_k,
                                          mode=MODES[args.mode], filter=conditions,
                                          group_by_document=args.per_document)
    if args.min_score is not None:
        request.score_threshold = args.min_score
    with channel(args) as chan:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(chan)
        try:
            response = stub.Search(request, timeout=args.timeout, metadata=call_metadata(args))
        except grpc.RpcError as err:
            print(describe_error(err), file=sys.stderr)
            return 1
    for rank, hit in enumerate(response.hits, 1):
        if args.json:
            print(json.dumps({"rank": rank, "score": hit.score, "document_id": hit.document_id,
                              "chunk_index": hit.chunk_index, "title": hit.title, "text": hit.text,
                              "metadata": dict(hit.metadata)}, ensure_ascii=False))
        else:
            snippet = " ".join(hit.text.split())[:160]
            print(f"{rank:3d}  {hit.score:8.4f}  {hit.document_id}#{hit.chunk_index}  {hit.title[:60]}\n     {snippet}")
    if not response.hits and not args.json:
        print("no hits", file=sys.stderr)
    return 0
