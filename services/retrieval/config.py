"""Retrieval service settings (section `retrieval`)."""

from typing import ClassVar

from pydantic import Field, model_validator

from services.common.config import ServerSettings


class RetrievalSettings(ServerSettings):
    """Settings of the retrieval service.

    Ingest-time settings (chunking, BM25 k1/b/avg_len) shape the stored vectors:
    changing them affects documents ingested afterwards only; re-ingest to apply
    them to a whole collection. The BM25 and fusion defaults were tuned on the
    SciFact *train* queries (see services/retrieval/README.md).
    """

    ENV_ALIASES: ClassVar[dict[str, str]] = {"qdrant_url": "QDRANT_URL", "qdrant_api_key": "QDRANT_API_KEY"}

    port: int = Field(50053, ge=0, le=65535, description="gRPC port; 0 picks a free one (tests).")
    metrics_port: int = Field(9103, ge=0, le=65535, description="Prometheus port; 0 picks a free one.")
    max_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024,
        description="Largest gRPC message; above max_document_chars, so an oversized document gets a clear "
                    "INVALID_ARGUMENT rather than a transport error.",
    )

    # Storage
    qdrant_path: str = Field(
        "var/qdrant", min_length=1,
        description="Directory of the embedded (local-mode) Qdrant store, used when qdrant_url is empty. "
                    "Local mode allows one process per directory: this service owns it.",
    )
    qdrant_url: str = Field("", description="Qdrant server or cluster URL (env QDRANT_URL); empty = embedded store.")
    qdrant_api_key: str = Field("", description="API key for the Qdrant server (env QDRANT_API_KEY); never logged.")
    qdrant_timeout_s: float = Field(10.0, gt=0, description="Timeout of one call to a Qdrant server.")
    max_collections_per_tenant: int = Field(100, ge=1, description="Collections one tenant may create.")

    # Embeddings
    quantize_ingest: bool = Field(
        True, description="int8 weights (per channel) for embedding documents on ingest: faster bulk loads for a "
                          "small quality cost (see the eval). Queries and the Embed RPC always run fp32.")
    embed_max_batch: int = Field(32, ge=1, le=256, description="Largest micro-batch of concurrent query embeddings.")
    embed_max_wait_ms: float = Field(
        0.0, ge=0, le=50,
        description="How long a lone query waits for others to batch with. 0: none; queries that arrive while a "
                    "batch is being embedded still form the next batch, so batching under load stays.")
    query_cache_entries: int = Field(
        1024, ge=0,
        description="Query embeddings kept for repeated searches, keyed by tenant and exact query text "
                    "(never shared between tenants); 0 turns the cache off.")
    ingest_batch_size: int = Field(16, ge=1, le=256, description="Chunks per forward pass on ingest (16 was fastest here).")
    max_embed_texts: int = Field(256, ge=1, description="Most texts in one Embed request.")
    max_embed_chars: int = Field(20_000, ge=1, description="Longest text in an Embed request (it is embedded up to 256 tokens).")

    # Ingest
    chunk_tokens: int = Field(
        256, ge=32, le=512,
        description="Most word-piece tokens of one embedded chunk, title and the model's special tokens included; "
                    "capped at the embedder's 256-token window.",
    )
    chunk_overlap: int = Field(32, ge=0, description="Tokens shared by consecutive chunks of a document.")
    max_title_tokens: int = Field(48, ge=0, description="Title tokens kept in front of each chunk; the rest of the window is text.")
    max_documents_per_request: int = Field(256, ge=1, description="Most documents in one Upsert request or stream message.")
    max_document_chars: int = Field(
        1_000_000, ge=1,
        description="Largest document text, in characters; longer ones are rejected (INVALID_ARGUMENT), shorter ones chunked.",
    )
    max_chunks_per_request: int = Field(
        4096, ge=1, description="Most chunks one request may produce (bounds the memory and time of one call).",
    )
    max_metadata_entries: int = Field(32, ge=0, description="Most metadata keys per document.")
    max_metadata_value_chars: int = Field(1024, ge=1, description="Longest metadata value.")
    write_batch_points: int = Field(256, ge=1, description="Points per Qdrant upsert call.")

    # Sparse (BM25) encoding, ingest time; tuned on SciFact train queries.
    bm25_k1: float = Field(0.9, ge=0, description="BM25 term-frequency saturation.")
    bm25_b: float = Field(0.3, ge=0, le=1, description="BM25 length normalisation.")
    bm25_avg_len: float = Field(
        60.0, gt=0, description="Reference chunk length in terms (after stopwords); SciFact chunks average 92.",
    )

    # Search
    default_top_k: int = Field(10, ge=1, description="top_k when a request sets none.")
    max_top_k: int = Field(100, ge=1, le=1000, description="Largest top_k a request may ask for.")
    hybrid_candidates: int = Field(100, ge=1, description="Candidates each of dense and sparse contribute to fusion.")
    rrf_k: int = Field(10, ge=1, description="Reciprocal-rank-fusion constant: score = sum w / (rank / w + k - 1), rank from 1.")
    rrf_dense_weight: float = Field(1.0, gt=0, description="Weight of the dense ranking in fusion.")
    rrf_sparse_weight: float = Field(1.0, gt=0, description="Weight of the sparse ranking in fusion.")
    group_overfetch: int = Field(4, ge=1, le=20, description="Chunks fetched per wanted document when hits are grouped by document.")
    max_filter_conditions: int = Field(16, ge=0, description="Most filter conditions in one search.")
    max_query_chars: int = Field(4096, ge=1, description="Longest query text.")

    @model_validator(mode="after")
    def _check(self) -> "RetrievalSettings":
        if self.chunk_overlap >= self.chunk_tokens // 2:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be less than half of chunk_tokens ({self.chunk_tokens})")
        if self.default_top_k > self.max_top_k:
            raise ValueError(f"default_top_k ({self.default_top_k}) must not exceed max_top_k ({self.max_top_k})")
        return self
