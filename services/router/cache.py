"""Tier 1: the response cache, exact and semantic, always scoped to one tenant.

Exact: the key is a sha256 over tenant, model, prompt-template id (name, version
and a digest of its text), the normalised conversation, sampling parameters and
retrieval options: everything that decides the answer. Two tenants never share a
key because the tenant is part of what is hashed.

Semantic: for single-turn requests, the question's embedding (computed once per
request by the retrieval service) is compared by cosine similarity with earlier
questions of the same scope (the exact key's material without the conversation,
so tenant, model, template, sampling and retrieval options still must match). The
vectors are kept in Redis or in process as a bounded list per scope and scanned
brute force: at most `semantic_max_entries` dot products of 384 values, well under
a millisecond, with no second vector store beside the retrieval service's Qdrant.
A hit also needs the lexical guards of similarity.py to pass: embeddings rate
"capital of France" and "capital of Spain", or "install" and "uninstall", as
close, and the guards keep such near-misses from being answered with the wrong text.

What the pipeline never stores (see caching.py): blocked or filtered answers,
answers to redacted input, degraded answers, and answers sampled with
temperature > 0 unless the tenant allows it.
"""

import hashlib
import json
import logging
import unicodedata
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from services.router.config import PromptTemplate
from services.router.metrics import CACHE_ERRORS
from services.router.similarity import same_question
from services.router.stores import Store, StoreError
from services.common.sampling import Sampling
from services.router.validation import Turn

log = logging.getLogger(__name__)

ANSWER_PREFIX = "llmsuite:router:answer:"
SEMANTIC_PREFIX = "llmsuite:router:semantic:"
# Longest question text kept beside a semantic-cache vector (for the lexical guards).
_MAX_QUESTION_CHARS = 2000


def normalise(text: str) -> str:
    """Unicode NFKC and collapsed whitespace: formatting differences do not change the key."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def template_id(name: str, template: PromptTemplate) -> str:
    digest = hashlib.sha256(template.system.encode("utf-8")).hexdigest()[:16]
    return f"{name}@{template.version}#{digest}"


@dataclass(frozen=True)
class Scope:
    """Everything besides the conversation that decides an answer."""

    tenant: str
    model: str
    template: str
    sampling: Sampling
    retrieval: tuple = ()

    def material(self) -> dict:
        return {"tenant": self.tenant, "model": self.model, "template": self.template,
                "sampling": asdict(self.sampling), "retrieval": list(self.retrieval)}

    def semantic_key(self) -> str:
        blob = json.dumps(self.material(), sort_keys=True, ensure_ascii=False)
        return SEMANTIC_PREFIX + hashlib.sha256(blob.encode("utf-8")).hexdigest()


def exact_key(scope: Scope, turns: Sequence[Turn]) -> str:
    material = scope.material()
    material["turns"] = [[turn.role, normalise(turn.content)] for turn in turns]
    blob = json.dumps(material, sort_keys=True, ensure_ascii=False)
    return ANSWER_PREFIX + hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedAnswer:
    text: str
    finish_reason: int
    input_tokens: int
    output_tokens: int
    model: str
    model_version: str
    tier: int
    # The variant of `model` that produced it (entries stored before variants existed have none).
    variant: str = ""

    def encode(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False).encode("utf-8")

    @classmethod
    def decode(cls, raw: bytes) -> "CachedAnswer":
        return cls(**json.loads(raw))


def _pack_vector(key: str, question: str, vector: np.ndarray) -> bytes:
    header = json.dumps({"key": key, "q": question[:_MAX_QUESTION_CHARS]}, ensure_ascii=False).encode("utf-8")
    # float16 halves what a Redis scan moves; cosine scores change by < 1e-3.
    return len(header).to_bytes(4, "big") + header + vector.astype(np.float16).tobytes()


def _unpack_vector(raw: bytes) -> tuple[str, str, np.ndarray]:
    size = int.from_bytes(raw[:4], "big")
    header = json.loads(raw[4:4 + size])
    return header["key"], header["q"], np.frombuffer(raw[4 + size:], dtype=np.float16).astype(np.float32)


@dataclass(frozen=True)
class SemanticHit:
    answer: CachedAnswer
    similarity: float


class ResponseCache:
    """Answers by exact key and questions by vector; store errors read as misses."""

    def __init__(self, answers: Store, vectors: Store, semantic_max_entries: int):
        self._answers = answers
        self._vectors = vectors
        self._semantic_max = semantic_max_entries

    async def get(self, key: str) -> CachedAnswer | None:
        try:
            raw = await self._answers.get(key)
        except StoreError as err:
            CACHE_ERRORS.labels("get").inc()
            log.warning("cache read skipped: %s", err)
            return None
        return CachedAnswer.decode(raw) if raw else None

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float) -> None:
        try:
            await self._answers.set(key, answer.encode(), ttl_s)
        except StoreError as err:
            CACHE_ERRORS.labels("put").inc()
            log.warning("cache write skipped: %s", err)

    async def drop(self, keys: list[str]) -> int:
        """Removes cached answers (a deleted session's); returns how many existed. StoreError when unreachable."""
        removed = 0
        for key in keys:
            removed += await self._answers.delete(key)
        return removed

    async def find_similar(self, scope: Scope, question: str, vector: np.ndarray,
                           threshold: float) -> SemanticHit | None:
        """The most similar earlier question of the scope at or above threshold, if its answer is live."""
        try:
            records = await self._vectors.items(scope.semantic_key())
        except StoreError as err:
            CACHE_ERRORS.labels("semantic_get").inc()
            log.warning("semantic cache read skipped: %s", err)
            return None
        if not records:
            return None
        unpacked = [_unpack_vector(raw) for raw in records]
        matrix = np.stack([row[2] for row in unpacked])
        scores = matrix @ vector.astype(np.float32)
        for index in np.argsort(-scores):
            similarity = float(scores[index])
            if similarity < threshold:
                break
            key, cached_question, _ = unpacked[index]
            if not same_question(question, cached_question):
                continue
            answer = await self.get(key)
            if answer is not None:
                return SemanticHit(answer, similarity)
        return None

    async def add_vector(self, scope: Scope, question: str, vector: np.ndarray, key: str, ttl_s: float) -> None:
        try:
            await self._vectors.push(scope.semantic_key(), [_pack_vector(key, question, vector)],
                                     self._semantic_max, ttl_s)
        except StoreError as err:
            CACHE_ERRORS.labels("semantic_put").inc()
            log.warning("semantic cache write skipped: %s", err)
