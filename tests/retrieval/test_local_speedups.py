"""The vectorised local-mode sparse scorer returns exactly what qdrant-client's own loop does."""

import numpy as np
import pytest
from qdrant_client.local import distances, sparse_distances
from qdrant_client.models import Distance, SparseVector

from services.retrieval import local_speedups


def random_vectors(rng, count, vocabulary=400, longest=40):
    vectors = []
    for _ in range(count):
        indices = np.unique(rng.integers(0, vocabulary, rng.integers(0, longest)))
        vectors.append(SparseVector(indices=indices.tolist(), values=rng.random(len(indices)).tolist()))
    return vectors


def random_query(rng, vocabulary=400, terms=8):
    indices = sorted(set(rng.integers(0, vocabulary, terms).tolist()))
    return SparseVector(indices=indices, values=(rng.random(len(indices)) * 3).tolist())


@pytest.mark.parametrize("empty_is_zero", [False, True])
def test_scores_are_identical_to_the_library(empty_is_zero):
    rng = np.random.default_rng(7)
    vectors = random_vectors(rng, 300)
    for _ in range(20):
        query = random_query(rng)
        expected = sparse_distances.calculate_distance_sparse(query, vectors, empty_is_zero)
        actual = local_speedups.calculate_distance_sparse(query, vectors, empty_is_zero)
        assert actual.dtype == expected.dtype == np.float32
        np.testing.assert_array_equal(actual, expected)


def test_a_replaced_vector_is_seen():
    rng = np.random.default_rng(8)
    vectors = random_vectors(rng, 50)
    query = SparseVector(indices=[1000], values=[1.0])
    assert np.isneginf(local_speedups.calculate_distance_sparse(query, vectors)).all()
    vectors[10] = SparseVector(indices=[1000], values=[2.5])
    scores = local_speedups.calculate_distance_sparse(query, vectors)
    assert scores[10] == np.float32(2.5) and np.isneginf(np.delete(scores, 10)).all()


def test_query_terms_unknown_to_the_collection_score_nothing():
    vectors = [SparseVector(indices=[1, 2], values=[1.0, 1.0])]
    scores = local_speedups.calculate_distance_sparse(SparseVector(indices=[3, 99], values=[1.0, 1.0]), vectors)
    assert np.isneginf(scores).all()


def test_empty_collection():
    assert local_speedups.calculate_distance_sparse(SparseVector(indices=[1], values=[1.0]), []).shape == (0,)


def test_dense_dot_products_match_the_library_within_float32_rounding():
    rng = np.random.default_rng(9)
    vectors = rng.standard_normal((500, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    query = rng.standard_normal(384)
    query /= np.linalg.norm(query)
    expected = distances.calculate_distance(query, vectors, Distance.DOT)
    actual = local_speedups.calculate_distance(query, vectors, Distance.DOT)
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, atol=1e-6)
    assert np.argmax(actual) == np.argmax(expected)


def test_other_distances_are_left_to_the_library():
    vectors = np.eye(3, dtype=np.float32) * 2
    query = np.array([1.0, 0.0, 0.0])
    np.testing.assert_array_equal(local_speedups.calculate_distance(query, vectors, Distance.COSINE),
                                  distances.calculate_distance(query, vectors, Distance.COSINE))
    with pytest.raises(ValueError, match="NaN"):
        local_speedups.calculate_distance(np.array([np.nan, 0, 0]), vectors, Distance.DOT)


def test_installed_for_the_checked_version():
    from qdrant_client.local import local_collection

    assert local_speedups.install()
    assert local_collection.calculate_distance_sparse is local_speedups.calculate_distance_sparse
    assert local_collection.calculate_distance is local_speedups.calculate_distance


# The direct query path against qdrant-client's own query_points, on an in-memory collection.


def random_collection(rng, points=400, dimension=8):
    from qdrant_client import QdrantClient, models

    local_speedups.install()
    client = QdrantClient(":memory:")
    client.create_collection("c", vectors_config={"dense": models.VectorParams(size=dimension, distance=Distance.DOT)},
                             sparse_vectors_config={"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)})
    dense = rng.standard_normal((points, dimension)).astype(np.float32)
    dense[::7] = dense[0]  # equal dense scores too
    # Few terms and integer weights: many equal sparse scores, so tie order is tested.
    sparse = random_vectors(rng, points, vocabulary=30, longest=5)
    sparse = [SparseVector(indices=v.indices, values=[float(round(x * 3)) + 1 for x in v.values]) for v in sparse]
    client.upsert("c", [models.PointStruct(id=i, vector={"dense": dense[i].tolist(), "bm25": sparse[i]},
                                           payload={"group": str(i % 3), "n": i}) for i in range(points)])
    client.delete("c", models.PointIdsList(points=list(range(5, points, 50))))
    return client


def as_pairs(points):
    return [(p.payload["n"], p.score) for p in points]


def as_found(found):
    return [(payload["n"], score) for payload, score in found]


@pytest.mark.parametrize("with_filter", [False, True])
def test_direct_queries_return_what_query_points_returns(with_filter):
    from qdrant_client import models

    rng = np.random.default_rng(11)
    client = random_collection(rng)
    collection = local_speedups.local_collection_of(client, "c")
    flt = models.Filter(must=[models.FieldCondition(key="group", match=models.MatchValue(value="1"))]) if with_filter else None
    for _ in range(15):
        dense = rng.standard_normal(8).astype(np.float32)
        sparse = random_query(rng, vocabulary=30, terms=3)
        for using, query in (("dense", dense), ("bm25", sparse)):
            for limit, threshold in ((10, None), (500, None), (50, 0.5)):
                expected = client.query_points("c", query=query.tolist() if using == "dense" else query, using=using,
                                               limit=limit, query_filter=flt, score_threshold=threshold,
                                               with_payload=True).points
                actual = local_speedups.nearest(collection, using, query, limit=limit, flt=flt,
                                                score_threshold=threshold)
                assert as_found(actual) == as_pairs(expected) and expected
        for weights in ((1.0, 1.0), (1.0, 2.5)):
            for candidates, limit in ((20, 10), (100, 100)):
                expected = client.query_points(
                    "c", prefetch=[models.Prefetch(query=dense.tolist(), using="dense", limit=candidates, filter=flt),
                                   models.Prefetch(query=sparse, using="bm25", limit=candidates, filter=flt)],
                    query=models.RrfQuery(rrf=models.Rrf(k=10, weights=list(weights))), limit=limit,
                    with_payload=True).points
                actual = local_speedups.fused(collection, [("dense", dense, weights[0]), ("bm25", sparse, weights[1])],
                                              candidates=candidates, limit=limit, flt=flt, rrf_k=10)
                assert as_found(actual) == as_pairs(expected) and expected


def test_fusion_of_a_single_ranking_and_an_unknown_term():
    from qdrant_client import models

    rng = np.random.default_rng(12)
    client = random_collection(rng)
    collection = local_speedups.local_collection_of(client, "c")
    dense = rng.standard_normal(8).astype(np.float32)
    expected = client.query_points("c", prefetch=[models.Prefetch(query=dense.tolist(), using="dense", limit=30)],
                                   query=models.RrfQuery(rrf=models.Rrf(k=10, weights=[1.0])), limit=10).points
    assert as_found(local_speedups.fused(collection, [("dense", dense, 1.0)], candidates=30, limit=10, flt=None,
                                         rrf_k=10)) == as_pairs(expected)
    unknown = SparseVector(indices=[10_000], values=[1.0])
    assert local_speedups.nearest(collection, "bm25", unknown, limit=10, flt=None, score_threshold=None) == []


def test_direct_queries_need_an_embedded_client():
    client = type("Remote", (), {"_client": object()})()
    with pytest.raises(TypeError):
        local_speedups.local_collection_of(client, "c")


def test_points_where_finds_what_a_filtered_scroll_finds():
    from qdrant_client import models

    client = random_collection(np.random.default_rng(13))
    collection = local_speedups.local_collection_of(client, "c")
    flt = models.Filter(must=[models.FieldCondition(key="group", match=models.MatchAny(any=["0", "2"]))])
    records, _ = client.scroll("c", scroll_filter=flt, limit=1000)
    found = local_speedups.points_where(collection, lambda payload: payload["group"] in ("0", "2"))
    assert found == [record.id for record in records] and 5 not in found  # point 5 is deleted
