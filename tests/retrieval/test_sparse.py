"""The BM25 sparse encoder."""

import pytest

from services.retrieval.sparse import SparseEncoder


@pytest.fixture
def encoder():
    return SparseEncoder(k1=1.2, b=0.75, avg_len=10)


def test_terms_are_lowercased_stemmed_without_stopwords(encoder):
    assert encoder.terms("The Studies of the running proteins, and IL-6!") == ["studi", "run", "protein", "il", "6"]


def test_inflections_share_an_index(encoder):
    assert encoder.query("study")[0] == encoder.query("studies")[0]
    assert encoder.query("protein")[0] != encoder.query("proteins binding")[0]


def test_document_weights_follow_bm25(encoder):
    indices, values = encoder.document("cell cell cell growth")
    weights = dict(zip(indices, values))
    norm = 1.2 * (1 - 0.75 + 0.75 * 4 / 10)
    assert weights[encoder.term_index("cell")] == pytest.approx(3 * 2.2 / (3 + norm))
    assert weights[encoder.term_index("growth")] == pytest.approx(1 * 2.2 / (1 + norm))
    assert indices == sorted(indices)


def test_longer_documents_weigh_a_term_less(encoder):
    short = dict(zip(*encoder.document("cell growth")))
    long = dict(zip(*encoder.document("cell growth " + "tissue " * 30)))
    index = encoder.term_index("cell")
    assert long[index] < short[index]


def test_query_weights_are_counts(encoder):
    indices, values = encoder.query("cell growth cell")
    assert dict(zip(indices, values)) == {encoder.term_index("cell"): 2.0, encoder.term_index("growth"): 1.0}


def test_text_without_terms_is_empty(encoder):
    assert encoder.query("the of and") == ([], [])
    assert encoder.document("") == ([], [])


def test_indices_are_stable_uint32():
    index = SparseEncoder.term_index("protein")
    assert index == SparseEncoder.term_index("protein") and 0 <= index < 2**32
