"""Search filters: Condition messages to a Qdrant filter, rejecting malformed ones.

Metadata is stored twice in each point's payload: `metadata.<key>` holds the
string value (equals / any_of match it exactly) and `metadata_num.<key>` holds
the value parsed as a number when it is one (range matches that), so a range
never compares strings.
"""

import math
from typing import Sequence

from llmsuite.retrieval.v1 import retrieval_pb2
from qdrant_client import models

from services.common.errors import InvalidArgument
from services.retrieval.validation import METADATA_KEY_RE

MAX_ANY_OF_VALUES = 256


def numeric(value: str) -> float | None:
    """`value` as a finite number, or None when it is not one."""
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def to_qdrant(conditions: Sequence[retrieval_pb2.Condition], max_conditions: int) -> models.Filter | None:
    if not conditions:
        return None
    if len(conditions) > max_conditions:
        raise InvalidArgument(f"filter has {len(conditions)} conditions; the limit is {max_conditions}", field="filter")
    must: list[models.FieldCondition] = []
    for i, condition in enumerate(conditions):
        where = f"filter[{i}]"
        if not METADATA_KEY_RE.match(condition.key):
            raise InvalidArgument(f"{where}.key must be a metadata key: 1 to 64 letters, digits, '-' or '_' "
                                  f"(got {condition.key[:80]!r})", field=f"{where}.key")
        kind = condition.WhichOneof("match")
        if kind is None:
            raise InvalidArgument(f"{where} sets no matcher: set one of equals, any_of, range", field=where)
        if kind == "equals":
            must.append(models.FieldCondition(key=f"metadata.{condition.key}",
                                              match=models.MatchValue(value=condition.equals)))
        elif kind == "any_of":
            values = list(condition.any_of.values)
            if not values or len(values) > MAX_ANY_OF_VALUES:
                raise InvalidArgument(f"{where}.any_of needs 1 to {MAX_ANY_OF_VALUES} values", field=f"{where}.any_of")
            must.append(models.FieldCondition(key=f"metadata.{condition.key}", match=models.MatchAny(any=values)))
        else:
            bounds = condition.range
            if not bounds.HasField("gte") and not bounds.HasField("lte"):
                raise InvalidArgument(f"{where}.range sets neither gte nor lte", field=f"{where}.range")
            gte = bounds.gte if bounds.HasField("gte") else None
            lte = bounds.lte if bounds.HasField("lte") else None
            if any(v is not None and not math.isfinite(v) for v in (gte, lte)):
                raise InvalidArgument(f"{where}.range bounds must be finite numbers", field=f"{where}.range")
            if gte is not None and lte is not None and gte > lte:
                raise InvalidArgument(f"{where}.range is empty: gte {gte} > lte {lte}", field=f"{where}.range")
            must.append(models.FieldCondition(key=f"metadata_num.{condition.key}", range=models.Range(gte=gte, lte=lte)))
    return models.Filter(must=must)
