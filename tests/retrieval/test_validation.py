"""Request validation, before anything is written."""

import math

import pytest
from llmsuite.retrieval.v1 import retrieval_pb2 as pb

from services.common.errors import InvalidArgument
from services.retrieval import validation
from services.retrieval.config import RetrievalSettings

SETTINGS = RetrievalSettings(max_documents_per_request=3, max_document_chars=100, max_metadata_entries=2)


def doc(**fields):
    return pb.Document(**{"id": "d", "text": "some text", **fields})


@pytest.mark.parametrize("docs, field", [
    ([], "documents"),
    ([doc(id="a"), doc(id="b"), doc(id="c"), doc(id="e")], "documents"),
    ([doc(id="")], "documents[0].id"),
    ([doc(id="x" * 257)], "documents[0].id"),
    ([doc(id="a"), doc(id="a")], "documents[1].id"),
    ([doc(text="")], "documents[0].text"),
    ([doc(text=" \n\t ")], "documents[0].text"),
    ([doc(text="x" * 101)], "documents[0].text"),
    ([doc(metadata={"a": "1", "b": "2", "c": "3"})], "documents[0].metadata"),
    ([doc(metadata={"bad.key": "1"})], "documents[0].metadata"),
    ([doc(id="a"), doc(id="b", text=" ")], "documents[1].text"),
])
def test_bad_documents_are_rejected_with_the_field(docs, field):
    with pytest.raises(InvalidArgument) as info:
        validation.documents(docs, SETTINGS)
    assert info.value.field == field


def test_good_documents_pass():
    validation.documents([doc(id="a", metadata={"year": "2020"}), doc(id="b", title="t")], SETTINGS)


def test_collection_names():
    assert validation.collection_name("kb_1-x") == "kb_1-x"
    for bad in ("", "a b", "a/b", "x" * 65, "ümlaut"):
        with pytest.raises(InvalidArgument):
            validation.collection_name(bad)


def test_top_k_defaults_and_limits():
    settings = RetrievalSettings()
    assert validation.top_k(0, settings) == settings.default_top_k
    assert validation.top_k(100, settings) == 100
    for bad in (-1, 101):
        with pytest.raises(InvalidArgument, match="top_k"):
            validation.top_k(bad, settings)


def test_query_vector_is_checked_and_normalised():
    assert validation.query_vector([], 4) is None
    assert validation.query_vector([3.0, 0, 4.0, 0], 4) == pytest.approx([0.6, 0, 0.8, 0])
    for bad, message in (([1.0] * 3, "dimension is 4"), ([math.nan, 1, 1, 1], "NaN"), ([0.0] * 4, "zeros")):
        with pytest.raises(InvalidArgument, match=message):
            validation.query_vector(bad, 4)


def test_settings_refuse_an_overlap_of_half_a_chunk():
    with pytest.raises(ValueError, match="chunk_overlap"):
        RetrievalSettings(chunk_tokens=64, chunk_overlap=32)
