"""Prometheus metrics of the retrieval service (the shared RPC metrics come from services.common).

No tenant or collection labels: both are unbounded, and per-tenant usage belongs
in the router's accounting, not in time series.
"""

from prometheus_client import Counter, Histogram

DOCUMENTS_INGESTED = Counter("llmsuite_retrieval_documents_ingested_total", "Documents stored (new or replaced).")
CHUNKS_INGESTED = Counter("llmsuite_retrieval_chunks_ingested_total", "Chunks embedded and written.")
CHUNKS_DELETED = Counter(
    "llmsuite_retrieval_chunks_deleted_total",
    "Chunks removed, by cause: a Delete call, or a re-ingested document that now has fewer chunks.",
    ["cause"],
)
TOKENS_EMBEDDED = Counter(
    "llmsuite_retrieval_tokens_embedded_total", "Word-piece tokens embedded on ingest (special tokens included).",
)
EMBED_BATCH_SIZE = Histogram(
    "llmsuite_retrieval_embed_batch_size", "Texts per embedding forward pass, by source (ingest, query, embed).",
    ["source"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
EMBED_SECONDS = Histogram(
    "llmsuite_retrieval_embed_seconds", "Time of one embedding forward pass, by source.",
    ["source"], buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
SEARCH_SECONDS = Histogram(
    "llmsuite_retrieval_search_seconds", "Search time by mode, query embedding included.",
    ["mode"], buckets=(0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1),
)
SEARCH_HITS = Histogram(
    "llmsuite_retrieval_search_hits", "Hits returned per search, by mode.",
    ["mode"], buckets=(0, 1, 3, 5, 10, 20, 50, 100),
)
