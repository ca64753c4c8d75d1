"""Request validation: every check that can reject a request runs before any write."""

import math
import re
from typing import Sequence

from llmsuite.retrieval.v1 import retrieval_pb2

from services.common.errors import InvalidArgument
from services.retrieval.config import RetrievalSettings
from services.retrieval.ids import COLLECTION_NAME_RE

# Metadata keys become Qdrant payload paths (metadata.<key>): no dots or brackets.
METADATA_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_DOCUMENT_ID_CHARS = 256


def collection_name(name: str, field: str = "collection") -> str:
    if not COLLECTION_NAME_RE.match(name):
        raise InvalidArgument(
            f"{field} must be 1 to 64 characters of letters, digits, '-' and '_' (got {name[:80]!r})", field=field)
    return name


def documents(docs: Sequence[retrieval_pb2.Document], settings: RetrievalSettings, field: str = "documents") -> None:
    """Checks a batch of documents; raises InvalidArgument naming the first bad field."""
    if not docs:
        raise InvalidArgument(f"{field} is empty: send at least one document", field=field)
    if len(docs) > settings.max_documents_per_request:
        raise InvalidArgument(
            f"{len(docs)} documents in one request; the limit is {settings.max_documents_per_request} "
            "(split the load, or use UpsertStream)", field=field, reason="BATCH_TOO_LARGE")
    seen: set[str] = set()
    for i, doc in enumerate(docs):
        where = f"{field}[{i}]"
        if not doc.id or len(doc.id) > MAX_DOCUMENT_ID_CHARS or not doc.id.isprintable():
            raise InvalidArgument(f"{where}.id must be 1 to {MAX_DOCUMENT_ID_CHARS} printable characters",
                                  field=f"{where}.id")
        if doc.id in seen:
            raise InvalidArgument(f"{where}.id {doc.id!r} appears twice in this request", field=f"{where}.id")
        seen.add(doc.id)
        _document_content(doc, where, settings)


def _document_content(doc: retrieval_pb2.Document, where: str, settings: RetrievalSettings) -> None:
    """Text, title and metadata of one document."""
    if len(doc.text) > settings.max_document_chars:
        raise InvalidArgument(
            f"{where}.text has {len(doc.text)} characters; the limit is {settings.max_document_chars} "
            "(split the document, or raise retrieval.max_document_chars)",
            field=f"{where}.text", reason="DOCUMENT_TOO_LARGE")
    if not doc.text.strip():
        raise InvalidArgument(f"{where}.text is empty or whitespace", field=f"{where}.text")
    if len(doc.title) > settings.max_metadata_value_chars:
        raise InvalidArgument(f"{where}.title is longer than {settings.max_metadata_value_chars} characters",
                              field=f"{where}.title")
    if len(doc.metadata) > settings.max_metadata_entries:
        raise InvalidArgument(f"{where}.metadata has {len(doc.metadata)} keys; the limit is "
                              f"{settings.max_metadata_entries}", field=f"{where}.metadata")
    for key, value in doc.metadata.items():
        if not METADATA_KEY_RE.match(key):
            raise InvalidArgument(f"{where}.metadata key {key[:80]!r} must be 1 to 64 letters, digits, '-' or '_'",
                                  field=f"{where}.metadata")
        if len(value) > settings.max_metadata_value_chars:
            raise InvalidArgument(f"{where}.metadata[{key}] is longer than {settings.max_metadata_value_chars} "
                                  "characters", field=f"{where}.metadata")


def document_ids(ids: Sequence[str], settings: RetrievalSettings) -> None:
    if not ids:
        raise InvalidArgument("document_ids is empty", field="document_ids")
    if len(ids) > settings.max_chunks_per_request:
        raise InvalidArgument(f"{len(ids)} document ids in one request; the limit is {settings.max_chunks_per_request}",
                              field="document_ids", reason="BATCH_TOO_LARGE")
    for i, doc_id in enumerate(ids):
        if not doc_id or len(doc_id) > MAX_DOCUMENT_ID_CHARS:
            raise InvalidArgument(f"document_ids[{i}] must be 1 to {MAX_DOCUMENT_ID_CHARS} characters",
                                  field=f"document_ids[{i}]")


def top_k(value: int, settings: RetrievalSettings) -> int:
    if value == 0:
        return settings.default_top_k
    if not 1 <= value <= settings.max_top_k:
        raise InvalidArgument(f"top_k must be 1 to {settings.max_top_k} (0 means {settings.default_top_k}); got {value}",
                              field="top_k")
    return value


def query_vector(values: Sequence[float], dimension: int) -> list[float] | None:
    """The caller's query embedding, L2-normalised, or None when not given."""
    if not values:
        return None
    if len(values) != dimension:
        raise InvalidArgument(f"query_vector has {len(values)} values; the embedding model's dimension is {dimension}",
                              field="query_vector")
    if not all(math.isfinite(v) for v in values):
        raise InvalidArgument("query_vector holds NaN or infinite values", field="query_vector")
    norm = math.sqrt(sum(v * v for v in values))
    if norm == 0:
        raise InvalidArgument("query_vector is all zeros", field="query_vector")
    return [v / norm for v in values]


def embed_texts(texts: Sequence[str], settings: RetrievalSettings) -> None:
    if not texts:
        raise InvalidArgument("texts is empty", field="texts")
    if len(texts) > settings.max_embed_texts:
        raise InvalidArgument(f"{len(texts)} texts in one request; the limit is {settings.max_embed_texts}",
                              field="texts", reason="BATCH_TOO_LARGE")
    for i, text in enumerate(texts):
        if not text.strip():
            raise InvalidArgument(f"texts[{i}] is empty or whitespace", field=f"texts[{i}]")
        if len(text) > settings.max_embed_chars:
            raise InvalidArgument(f"texts[{i}] has {len(text)} characters; the limit is {settings.max_embed_chars}",
                                  field=f"texts[{i}]")
