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
