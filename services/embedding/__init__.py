"""all-MiniLM-L6-v2 sentence embeddings on ONNX Runtime, shared by guardrails and retrieval.

ML code, kept out of services/common (which is runtime only): `embedder.py` serves
vectors, `onnx_model.py` exports the pinned weights to ONNX once and caches them.
"""
