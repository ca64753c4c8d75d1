"""Condition messages to Qdrant filters; malformed conditions are INVALID_ARGUMENT."""

import math

import pytest
from llmsuite.retrieval.v1 import retrieval_pb2 as pb
from qdrant_client import models

from services.common.errors import InvalidArgument
from services.retrieval.filters import numeric, to_qdrant


def test_no_conditions_is_no_filter():
    assert to_qdrant([], 16) is None


def test_conditions_map_to_metadata_fields():
    flt = to_qdrant([
        pb.Condition(key="lang", equals="en"),
        pb.Condition(key="kind", any_of=pb.StringList(values=["a", "b"])),
        pb.Condition(key="year", range=pb.Range(gte=2019)),
    ], 16)
    assert flt.must == [
        models.FieldCondition(key="metadata.lang", match=models.MatchValue(value="en")),
        models.FieldCondition(key="metadata.kind", match=models.MatchAny(any=["a", "b"])),
        models.FieldCondition(key="metadata_num.year", range=models.Range(gte=2019.0, lte=None)),
    ]


@pytest.mark.parametrize("condition, field", [
    (pb.Condition(key="lang"), "filter[0]"),
    (pb.Condition(key="", equals="x"), "filter[0].key"),
    (pb.Condition(key="a.b", equals="x"), "filter[0].key"),
    (pb.Condition(key="k", any_of=pb.StringList()), "filter[0].any_of"),
    (pb.Condition(key="k", range=pb.Range()), "filter[0].range"),
    (pb.Condition(key="k", range=pb.Range(gte=5, lte=1)), "filter[0].range"),
    (pb.Condition(key="k", range=pb.Range(gte=math.nan)), "filter[0].range"),
    (pb.Condition(key="k", range=pb.Range(lte=math.inf)), "filter[0].range"),
])
def test_malformed_conditions_are_rejected(condition, field):
    with pytest.raises(InvalidArgument) as info:
        to_qdrant([condition], 16)
    assert info.value.field == field


def test_too_many_conditions_are_rejected():
    with pytest.raises(InvalidArgument, match="limit is 2"):
        to_qdrant([pb.Condition(key="k", equals="v")] * 3, 2)


def test_numeric_parses_finite_numbers_only():
    assert numeric("2020") == 2020.0 and numeric("-1.5e3") == -1500.0
    assert numeric("abc") is None and numeric("nan") is None and numeric("inf") is None
