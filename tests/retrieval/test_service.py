"""The retrieval service over real gRPC: ingest, search, delete, tenants, restart, bad input."""

import json
import urllib.request

import grpc
import numpy as np
import pytest
from llmsuite.retrieval.v1 import retrieval_pb2 as pb
from llmsuite.retrieval.v1 import retrieval_pb2_grpc

from tests.harness import assert_grpc_error
from tests.retrieval.conftest import start

pytestmark = pytest.mark.integration

ACME = (("x-llmsuite-tenant", "acme"),)
GLOBEX = (("x-llmsuite-tenant", "globex"),)

DOCS = [
    pb.Document(id="cats", title="Cats", text="Cats are small carnivorous mammals that purr when content.",
                metadata={"kind": "animal", "year": "2020"}),
    pb.Document(id="rust", title="Rust", text="Rust is a systems programming language focused on memory safety.",
                metadata={"kind": "tech", "year": "2015"}),
    pb.Document(id="tea", title="Green tea", text="Green tea is brewed from unoxidised leaves of Camellia sinensis.",
                metadata={"kind": "food", "year": "2018"}),
]
# About 2,500 tokens: several chunks, with a fact near the end.
LONG = " ".join(f"Paragraph {i} discusses glaciers, sediment transport and meltwater." for i in range(180)) + \
    " Finally, the zebrafish regenerates its heart after injury."


def upsert(stub, collection, docs, tenant=ACME):
    return stub.Upsert(pb.UpsertRequest(collection=collection, documents=docs), metadata=tenant, timeout=60)


def search(stub, collection, query, tenant=ACME, **fields):
    return stub.Search(pb.SearchRequest(collection=collection, query=query, **fields), metadata=tenant, timeout=30).hits


def chunks_in(stub, collection, tenant=ACME):
    found = stub.ListCollections(pb.ListCollectionsRequest(), metadata=tenant).collections
    return {c.name: c.chunks for c in found}.get(collection)


def error_of(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


@pytest.fixture(scope="module")
def kb(retrieval):
    upsert(retrieval.stub, "kb", DOCS)
    return "kb"


@pytest.mark.parametrize("mode", [pb.SEARCH_MODE_DENSE, pb.SEARCH_MODE_SPARSE, pb.SEARCH_MODE_HYBRID,
                                  pb.SEARCH_MODE_UNSPECIFIED])
def test_each_mode_finds_the_relevant_document(stub, kb, mode):
    hits = search(stub, kb, "which animal purrs?", mode=mode, top_k=3)
    assert hits[0].document_id == "cats"
    assert hits[0].text == DOCS[0].text and hits[0].title == "Cats" and hits[0].chunk_index == 0
    assert dict(hits[0].metadata) == {"kind": "animal", "year": "2020"}
    assert list(hits) == sorted(hits, key=lambda h: -h.score)


def test_metadata_filters(stub, kb):
    hits = search(stub, kb, "language", filter=[pb.Condition(key="kind", equals="tech")])
    assert [h.document_id for h in hits] == ["rust"]
    hits = search(stub, kb, "anything", mode=pb.SEARCH_MODE_DENSE,
                  filter=[pb.Condition(key="kind", any_of=pb.StringList(values=["food", "animal"]))])
    assert {h.document_id for h in hits} == {"cats", "tea"}
    hits = search(stub, kb, "anything", mode=pb.SEARCH_MODE_DENSE,
                  filter=[pb.Condition(key="year", range=pb.Range(gte=2016, lte=2019))])
    assert [h.document_id for h in hits] == ["tea"]
    assert search(stub, kb, "anything", filter=[pb.Condition(key="kind", equals="none")]) == []


def test_top_k_and_score_threshold(stub, kb):
    assert len(search(stub, kb, "cats", mode=pb.SEARCH_MODE_DENSE, top_k=1)) == 1
    assert len(search(stub, kb, "cats", mode=pb.SEARCH_MODE_DENSE)) == 3  # default top_k 10, 3 chunks stored
    all_hits = search(stub, kb, "cats", mode=pb.SEARCH_MODE_DENSE)
    cut = (all_hits[0].score + all_hits[1].score) / 2
    kept = search(stub, kb, "cats", mode=pb.SEARCH_MODE_DENSE, score_threshold=cut)
    assert [h.document_id for h in kept] == [all_hits[0].document_id]


def test_embed_counts_the_tokens_the_model_read(stub):
    """[CLS] memory safety [SEP] is four tokens; a text past the model's window counts as the window."""
    assert stub.Embed(pb.EmbedRequest(texts=["memory safety"]), metadata=ACME).input_tokens == 4
    both = stub.Embed(pb.EmbedRequest(texts=["memory safety", "memory " * 400]), metadata=ACME)
    assert both.input_tokens == 4 + 256


def test_embed_returns_normalised_vectors_usable_as_query_vector(stub, kb):
    response = stub.Embed(pb.EmbedRequest(texts=["which animal purrs?", "memory safety"]), metadata=ACME)
    assert response.dimension == 384 and response.model.endswith("all-MiniLM-L6-v2")
    pair = np.array([e.values for e in response.embeddings])
    assert pair.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(pair, axis=1), 1.0, atol=1e-5)
    alone = np.array(stub.Embed(pb.EmbedRequest(texts=["which animal purrs?"]), metadata=ACME).embeddings[0].values)
    # int8 dynamic quantisation scales activations per batch, so batch-mates move a vector
    # (see the README); the vector of a text embedded alone is the one a search computes.
    assert float(alone @ pair[0]) > 0.9
    by_text = search(stub, kb, "which animal purrs?", mode=pb.SEARCH_MODE_DENSE)
    by_vector = search(stub, kb, "", mode=pb.SEARCH_MODE_DENSE, query_vector=alone.tolist())
    assert [h.document_id for h in by_vector] == [h.document_id for h in by_text]
    assert [h.score for h in by_vector] == pytest.approx([h.score for h in by_text], abs=1e-4)


def test_long_document_is_chunked_and_its_end_is_found(stub):
    response = upsert(stub, "long", [pb.Document(id="glaciers", text=LONG)])
    assert response.documents == 1 and response.chunks > 5
    hits = search(stub, "long", "zebrafish heart regeneration", top_k=1)
    assert hits[0].chunk_index == response.chunks - 1 and "zebrafish" in hits[0].text


def test_reingest_replaces_chunks(stub):
    first = upsert(stub, "replace", [pb.Document(id="doc", text=LONG), DOCS[0]])
    assert chunks_in(stub, "replace") == first.chunks
    again = upsert(stub, "replace", [pb.Document(id="doc", text=LONG), DOCS[0]])
    assert chunks_in(stub, "replace") == first.chunks == again.chunks  # same ids: replaced, not duplicated
    upsert(stub, "replace", [pb.Document(id="doc", text="A short note about volcanoes.")])
    assert chunks_in(stub, "replace") == 2  # the stale chunks of the long version are gone
    hits = search(stub, "replace", "glaciers sediment", top_k=10)
    assert all("glaciers" not in h.text for h in hits)
    assert {h.document_id for h in hits} == {"doc", "cats"}


def test_delete_by_document_id(stub):
    upsert(stub, "deleting", DOCS)
    response = stub.Delete(pb.DeleteRequest(collection="deleting", document_ids=["cats", "missing"]), metadata=ACME)
    assert response.chunks_deleted == 1
    assert "cats" not in {h.document_id for h in search(stub, "deleting", "animal that purrs")}
    assert chunks_in(stub, "deleting") == 2


def test_group_by_document_gives_one_hit_per_document(stub):
    upsert(stub, "grouped", [pb.Document(id="glaciers", text=LONG), DOCS[1]])
    hits = search(stub, "grouped", "glaciers", top_k=5, group_by_document=True)
    assert [h.document_id for h in hits] == ["glaciers", "rust"]


def test_collections_lifecycle(stub):
    created = stub.CreateCollection(pb.CreateCollectionRequest(name="lifecycle"), metadata=ACME).collection
    assert (created.name, created.chunks, created.dimension) == ("lifecycle", 0, 384)
    assert_grpc_error(error_of(stub.CreateCollection, pb.CreateCollectionRequest(name="lifecycle"), metadata=ACME),
                      grpc.StatusCode.ALREADY_EXISTS, "lifecycle")
    assert search(stub, "lifecycle", "anything") == []
    stub.DeleteCollection(pb.DeleteCollectionRequest(name="lifecycle"), metadata=ACME)
    assert chunks_in(stub, "lifecycle") is None
    assert_grpc_error(error_of(search, stub, "lifecycle", "anything"), grpc.StatusCode.NOT_FOUND, "lifecycle")


def test_upsert_stream_reports_progress_per_batch(stub):
    batches = [pb.UpsertStreamRequest(collection="streamed", documents=[doc]) for doc in DOCS]
    progress = list(stub.UpsertStream(iter(batches), metadata=ACME, timeout=60))
    assert [(p.documents_done, p.chunks_done) for p in progress] == [(1, 1), (2, 2), (3, 3)]
    assert chunks_in(stub, "streamed") == 3


def test_tenants_are_isolated(stub, kb):
    for call, request in [
        (stub.Search, pb.SearchRequest(collection=kb, query="cats")),
        (stub.Delete, pb.DeleteRequest(collection=kb, document_ids=["cats"])),
        (stub.DeleteCollection, pb.DeleteCollectionRequest(name=kb)),
    ]:
        assert_grpc_error(error_of(call, request, metadata=GLOBEX), grpc.StatusCode.NOT_FOUND, "not found")
    assert kb not in {c.name for c in stub.ListCollections(pb.ListCollectionsRequest(), metadata=GLOBEX).collections}
    # Globex's own collection of the same name holds only Globex's documents.
    upsert(stub, kb, [pb.Document(id="globex-only", text="Quarterly revenue of the widget division.")], tenant=GLOBEX)
    assert {h.document_id for h in search(stub, kb, "cats purr", tenant=GLOBEX)} == {"globex-only"}
    assert "globex-only" not in {h.document_id for h in search(stub, kb, "revenue widget", top_k=10)}
    assert chunks_in(stub, kb) == 3


def test_data_survives_a_restart(tmp_path):
    process, port, _ = start(tmp_path, tmp_path / "qdrant", name="retrieval-restart")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            upsert(retrieval_pb2_grpc.RetrievalServiceStub(channel), "kept", DOCS)
    finally:
        assert process.stop() == 0
    process, port, _ = start(tmp_path, tmp_path / "qdrant", name="retrieval-restart")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            restarted = retrieval_pb2_grpc.RetrievalServiceStub(channel)
            assert chunks_in(restarted, "kept") == 3
            assert search(restarted, "kept", "programming language memory safety")[0].document_id == "rust"
    finally:
        process.stop()


def test_metrics_count_ingest_and_searches(retrieval, kb):
    search(retrieval.stub, kb, "cats", mode=pb.SEARCH_MODE_SPARSE)
    with urllib.request.urlopen(f"http://127.0.0.1:{retrieval.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "llmsuite_retrieval_chunks_ingested_total" in text
    assert 'llmsuite_retrieval_search_seconds_count{mode="sparse"}' in text
    assert 'llmsuite_retrieval_embed_batch_size_count{source="ingest"}' in text


def query_embeddings(retrieval) -> float:
    """Forward passes run for search queries so far, from the service's metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{retrieval.metrics_port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith('llmsuite_retrieval_embed_batch_size_count{source="query"}'):
                return float(line.split()[-1])
    raise AssertionError("no query embedding metric")


def test_a_repeated_query_reuses_its_embedding_within_its_tenant_only(retrieval, kb):
    stub, query = retrieval.stub, "which animals purr when they are content"
    before = query_embeddings(retrieval)
    first = search(stub, kb, query, mode=pb.SEARCH_MODE_DENSE)
    assert query_embeddings(retrieval) == before + 1
    again = search(stub, kb, query, mode=pb.SEARCH_MODE_HYBRID)
    assert query_embeddings(retrieval) == before + 1
    assert first[0].document_id == again[0].document_id == "cats"
    assert [(h.document_id, h.score) for h in search(stub, kb, query, mode=pb.SEARCH_MODE_DENSE)] == \
        [(h.document_id, h.score) for h in first]
    # The same text from another tenant is embedded afresh.
    upsert(stub, "cache-kb", DOCS[:1], tenant=GLOBEX)
    search(stub, "cache-kb", query, tenant=GLOBEX, mode=pb.SEARCH_MODE_DENSE)
    assert query_embeddings(retrieval) == before + 2


# Bad input: a clear status, nothing written, and the service keeps serving.

@pytest.mark.parametrize("docs, fragment, field", [
    ([pb.Document(id="a", text="")], "empty", "documents[0].text"),
    ([pb.Document(id="a", text="   \n ")], "whitespace", "documents[0].text"),
    ([pb.Document(id="", text="x")], "id", "documents[0].id"),
    ([DOCS[0], pb.Document(id="big", text="x " * 2_500_000)], "limit is 1000000", "documents[1].text"),
    ([pb.Document(id=str(i), text="t") for i in range(9)], "limit is 8", "documents"),
])
def test_bad_batches_write_nothing(stub, docs, fragment, field):
    err = error_of(upsert, stub, "never-written", docs)
    assert_grpc_error(err, grpc.StatusCode.INVALID_ARGUMENT, fragment, field)
    assert chunks_in(stub, "never-written") is None


@pytest.mark.parametrize("fields, fragment", [
    ({"filter": [pb.Condition(key="kind")]}, "filter[0]"),
    ({"filter": [pb.Condition(key="a.b", equals="x")]}, "filter[0].key"),
    ({"filter": [pb.Condition(key="year", range=pb.Range(gte=3, lte=1))]}, "empty"),
    ({"query_vector": [0.1] * 383, "mode": pb.SEARCH_MODE_DENSE}, "384"),
    ({"top_k": 101}, "top_k"),
    ({"score_threshold": 0.5}, "score_threshold"),
    ({"query": ""}, "query is empty"),
    ({"query": "", "mode": pb.SEARCH_MODE_SPARSE, "query_vector": [0.1] * 384}, "query is empty"),
])
def test_bad_searches_are_invalid_argument(stub, kb, fields, fragment):
    request = {"query": "cats", **fields}
    err = error_of(search, stub, kb, **request)
    assert_grpc_error(err, grpc.StatusCode.INVALID_ARGUMENT, fragment)


def test_unknown_collection_is_not_found(stub):
    for call, request in [(stub.Search, pb.SearchRequest(collection="nope", query="x")),
                          (stub.Delete, pb.DeleteRequest(collection="nope", document_ids=["a"]))]:
        assert_grpc_error(error_of(call, request, metadata=ACME), grpc.StatusCode.NOT_FOUND, "'nope' not found")
    assert_grpc_error(error_of(search, stub, "bad name!", "x"), grpc.StatusCode.INVALID_ARGUMENT, "collection")


def test_bad_embed_requests(stub):
    assert_grpc_error(error_of(stub.Embed, pb.EmbedRequest(), metadata=ACME), grpc.StatusCode.INVALID_ARGUMENT, "texts")
    assert_grpc_error(error_of(stub.Embed, pb.EmbedRequest(texts=["ok", " "]), metadata=ACME),
                      grpc.StatusCode.INVALID_ARGUMENT, "texts[1]")


def test_a_stream_that_switches_collection_fails_after_the_stored_batches(stub):
    batches = [pb.UpsertStreamRequest(collection="stream-a", documents=[DOCS[0]]),
               pb.UpsertStreamRequest(collection="stream-b", documents=[DOCS[1]])]
    progress = []
    with pytest.raises(grpc.RpcError) as info:
        for update in stub.UpsertStream(iter(batches), metadata=ACME, timeout=60):
            progress.append(update)
    assert_grpc_error(info.value, grpc.StatusCode.INVALID_ARGUMENT, "one collection")
    # The stored first batch was reported before the error, and nothing else was written.
    assert [(p.documents_done, p.chunks_done) for p in progress] == [(1, 1)]
    assert chunks_in(stub, "stream-a") == 1 and chunks_in(stub, "stream-b") is None


def test_service_still_serves_after_bad_input(stub, kb):
    assert search(stub, kb, "green tea leaves")[0].document_id == "tea"


def test_cli_ingests_a_jsonl_file_and_searches(retrieval, tmp_path, capsys):
    import argparse

    from services.cli import retrieval as cli

    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) for d in DOCS) + "\n")
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    target = f"127.0.0.1:{retrieval.port}"
    args = parser.parse_args(["retrieval", "ingest", str(path), "--collection", "cli", "--target", target,
                              "--batch-size", "2"])
    assert args.run(args) == 0
    assert "stored 3 documents as 3 chunks" in capsys.readouterr().out
    args = parser.parse_args(["retrieval", "search", "memory safe programming", "--collection", "cli",
                              "--target", target, "--json", "--top-k", "1"])
    assert args.run(args) == 0
    hit = json.loads(capsys.readouterr().out)
    assert hit["document_id"] == "rust" and hit["rank"] == 1

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "1", "text": "ok"}\n{"_id": "2"}\n')
    args = parser.parse_args(["retrieval", "ingest", str(bad), "--collection", "cli", "--target", target])
    assert args.run(args) == 2
    assert "bad.jsonl:2: text missing" in capsys.readouterr().err
