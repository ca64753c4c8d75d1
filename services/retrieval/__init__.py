"""Retrieval service: tenant-owned document collections on Qdrant, dense/sparse/hybrid search, embeddings."""
