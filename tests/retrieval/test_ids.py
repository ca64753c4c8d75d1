"""Collection names per tenant and deterministic point ids."""

import uuid

from services.retrieval import ids


def test_point_ids_are_deterministic_uuids():
    first = ids.point_id("acme", "kb", "doc-1", 0)
    assert first == ids.point_id("acme", "kb", "doc-1", 0)
    assert uuid.UUID(first).version == 5


def test_point_ids_differ_by_every_part():
    base = ("acme", "kb", "doc-1", 0)
    variants = [("other", "kb", "doc-1", 0), ("acme", "kb2", "doc-1", 0), ("acme", "kb", "doc-2", 0),
                ("acme", "kb", "doc-1", 1)]
    all_ids = {ids.point_id(*base)} | {ids.point_id(*v) for v in variants}
    assert len(all_ids) == 5


def test_point_ids_are_unambiguous_when_parts_hold_separators():
    assert ids.point_id("a/b", "c", "d", 0) != ids.point_id("a", "b/c", "d", 0)
    assert ids.point_id("a", "b", "c\x1fd", 0) != ids.point_id("a", "b", "c", 0)


def test_collection_names_belong_to_one_tenant():
    qname = ids.qdrant_collection("acme", "kb")
    assert ids.logical_name("acme", qname) == "kb"
    assert ids.logical_name("globex", qname) is None
    assert ids.qdrant_collection("globex", "kb") != qname
    assert "acme" not in qname  # tenant ids are hashed, whatever characters they hold


def test_foreign_qdrant_collections_are_not_listed():
    assert ids.logical_name("acme", "some_other_app") is None
    assert ids.logical_name("acme", ids.tenant_prefix("acme") + "bad.name") is None
