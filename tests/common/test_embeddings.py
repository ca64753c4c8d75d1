import numpy as np
import pytest

from services.common.embeddings import DIMENSION, BatchingEmbedder, Embedder


@pytest.fixture(scope="module")
def embedder():
    return Embedder(quantize=False, max_tokens=32)


def test_vectors_are_normalised_and_similar_texts_are_closer(embedder):
    vectors = embedder.embed(["How do I reset my password?", "Steps to change a forgotten password",
                              "The boiling point of water at sea level"])
    assert vectors.shape == (3, DIMENSION)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_count_tokens_is_not_truncated_by_the_model_window(embedder):
    text = "word " * 100
    assert embedder.count_tokens(text) == 100 > embedder.max_tokens


async def test_batching_embedder_matches_direct_embedding(embedder):
    batching = BatchingEmbedder(embedder, max_batch=8, max_wait_ms=1)
    texts = [f"question {i} about caching" for i in range(5)]
    try:
        batched = await batching.embed_many(texts)
    finally:
        await batching.close()
    assert np.allclose(batched, embedder.embed(texts), atol=1e-5)
