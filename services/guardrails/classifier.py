"""The learned injection signals: a lexical model and a fine-tuned semantic one.

- lexical: logistic regression on hashed character 3-5-grams of the normalised
  prompt; costs about a millisecond for a 500-character prompt.
- semantic: a logistic head on the pooled vector of all-MiniLM-L6-v2 fine-tuned
  with low-rank adapters (finetune.py; the adapters are merged into the ONNX model
  that the service's embedder runs, int8). It reads the normalised prompt too.

Neither model sees the pattern families: they run only where the patterns are
not decisive, and trained on the families as features they learned "no pattern
hit, so probably benign", which fails on attacks phrased unlike the training
rows.

The lexical model is a gate: when it is confidently benign or confidently an
attack, the embedding is not computed and its probability is the learned score;
otherwise the learned score is the mean of both probabilities. Finally the
learned score is mapped (piecewise linear in log-odds, order kept) so that the
two operating points chosen by cross-validation land on the policies' default
thresholds: the flag point on FLAG_SCORE (0.5) and the block point on
BLOCK_SCORE (0.8). Weights are plain JSON (lexical model, head, settings) plus the
adapters' .npz, built together by `python -m services.guardrails.train` from the
tunable data only; the JSON records the adapters' sha256.
"""

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.utils import murmurhash3_32

from services.guardrails.config import BLOCK_SCORE, FLAG_SCORE

DEFAULT_PATH = Path(__file__).parent / "data" / "injection_classifier.json"
# The fine-tuned encoder's low-rank adapters, written by train.py with the JSON file.
DEFAULT_ADAPTER_PATH = DEFAULT_PATH.with_name("injection_adapter.npz")
# Bound on the n-gram bucket cache (about 100 bytes an entry); cleared when full.
_MAX_CACHED_NGRAMS = 200_000


class ClassifierError(Exception):
    """The classifier file is missing or does not fit this code."""


def _sigmoid(logit: float) -> float:
    return float(1 / (1 + np.exp(-logit)))


def _logit(probability: float) -> float:
    clipped = min(max(probability, 1e-6), 1 - 1e-6)
    return float(np.log(clipped / (1 - clipped)))


@dataclass(frozen=True)
class HashingSpec:
    """Parameters of scikit-learn's HashingVectorizer, which must match training."""

    n_features: int
    ngram_min: int
    ngram_max: int

    def vectorizer(self):
        from sklearn.feature_extraction.text import HashingVectorizer

        return HashingVectorizer(analyzer="char_wb", ngram_range=(self.ngram_min, self.ngram_max),
                                 n_features=self.n_features, alternate_sign=False, norm="l2", lowercase=True)


class _Buckets(dict):
    """n-gram -> hashed bucket, computed on first use: murmurhash3 of each of a
    prompt's ~1,500 n-grams, one Python call each, was most of the lexical model's
    cost; looking them up runs at C speed."""

    def __init__(self, n_features: int):
        super().__init__()
        self.n_features = n_features

    def __missing__(self, gram: str) -> int:
        # scikit-learn's bucketing: abs of the signed 32-bit hash, modulo n_features.
        h = murmurhash3_32(gram)
        n = self.n_features
        bucket = self[gram] = (2 ** 31 - n) % n if h == -(2 ** 31) else abs(h) % n
        return bucket


def _verified_adapter(path: Path, metadata: dict) -> Path | None:
    """The adapter file named in the classifier's metadata, checked against its recorded sha256."""
    from services.embedding.onnx_model import sha256_file

    if "adapter" not in metadata:
        return None
    adapter = path.with_name(metadata["adapter"])
    if not adapter.is_file():
        raise ClassifierError(f"{adapter}: the fine-tuned adapter this classifier was trained with is missing")
    if sha256_file(adapter) != metadata.get("adapter_sha256"):
        raise ClassifierError(f"{adapter}: sha256 differs from the one recorded at training; rebuild both files "
                              "with `python -m services.guardrails.train`")
    return adapter


class InjectionClassifier:
    def __init__(self, *, hashing: HashingSpec, lexical_coef: np.ndarray, lexical_intercept: float,
                 embedding_dim: int, semantic_coef: np.ndarray, semantic_intercept: float,
                 gate_benign_below: float, gate_attack_above: float, flag_point: float = FLAG_SCORE,
                 block_point: float = BLOCK_SCORE, metadata: dict | None = None, adapter: Path | None = None):
        if lexical_coef.shape != (hashing.n_features,):
            raise ClassifierError(f"lexical model has {lexical_coef.shape[0]} weights, expected "
                                  f"{hashing.n_features} hashed n-grams")
        if semantic_coef.shape != (embedding_dim,):
            raise ClassifierError(f"semantic model has {semantic_coef.shape[0]} weights, expected "
                                  f"{embedding_dim} embedding values")
        self.hashing = hashing
        self.lexical_coef = lexical_coef.astype(np.float32)
        self.lexical_intercept = float(lexical_intercept)
        self.embedding_dim = embedding_dim
        self.semantic_coef = semantic_coef.astype(np.float32)
        self.semantic_intercept = float(semantic_intercept)
        self.gate_benign_below = gate_benign_below
        self.gate_attack_above = gate_attack_above
        if not 0 < flag_point < block_point < 1:
            raise ClassifierError(f"operating points flag {flag_point} and block {block_point} must satisfy "
                                  "0 < flag < block < 1")
        self.flag_point = flag_point
        self.block_point = block_point
        self.metadata = metadata or {}
        # The fine-tuned encoder whose vectors the semantic model reads (None: the plain model).
        self.adapter = adapter
        self._analyzer = hashing.vectorizer().build_analyzer()
        self._buckets = _Buckets(hashing.n_features)

    @classmethod
    def load(cls, path: Path | str = DEFAULT_PATH) -> "InjectionClassifier":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            adapter = _verified_adapter(Path(path), data.get("metadata") or {})
            hashing = HashingSpec(**data["lexical"]["hashing"])
            lexical = np.zeros(hashing.n_features, dtype=np.float32)
            lexical[np.asarray(data["lexical"]["ngram_index"], dtype=np.int64)] = data["lexical"]["ngram_coef"]
            return cls(
                hashing=hashing, lexical_coef=lexical, lexical_intercept=data["lexical"]["intercept"],
                embedding_dim=data["semantic"]["embedding_dim"],
                semantic_coef=np.asarray(data["semantic"]["coef"], dtype=np.float32),
                semantic_intercept=data["semantic"]["intercept"],
                gate_benign_below=data["gate"]["benign_below"], gate_attack_above=data["gate"]["attack_above"],
                flag_point=data["operating_points"]["flag"], block_point=data["operating_points"]["block"],
                metadata=data.get("metadata"), adapter=adapter)
        except FileNotFoundError as err:
            raise ClassifierError(f"{path}: not found; build it with `python -m services.guardrails.train`") from err
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise ClassifierError(f"{path}: not a valid classifier file ({err!r})") from err

    def to_json(self) -> str:
        ngrams = self.lexical_coef
        index = np.flatnonzero(np.round(ngrams, 5))
        return json.dumps({
            "gate": {"benign_below": self.gate_benign_below, "attack_above": self.gate_attack_above},
            "operating_points": {"flag": self.flag_point, "block": self.block_point},
            "lexical": {
                "hashing": vars(self.hashing),
                "intercept": round(self.lexical_intercept, 5),
                # Sparse: only n-gram buckets seen in training have a weight.
                "ngram_index": [int(i) for i in index],
                "ngram_coef": [round(float(ngrams[i]), 5) for i in index],
            },
            "semantic": {
                "embedding_dim": self.embedding_dim,
                "intercept": round(self.semantic_intercept, 5),
                "coef": [round(float(v), 5) for v in self.semantic_coef],
            },
            "metadata": self.metadata,
        }, separators=(",", ":")) + "\n"

    def hashed(self, normalised_text: str) -> tuple[np.ndarray, np.ndarray]:
        """The HashingVectorizer row of text as (indices, values), without its per-call
        overhead: scikit-learn's own analyzer for the n-grams, the same murmurhash3
        bucketing (via a cache) and l2 norm."""
        grams = self._analyzer(normalised_text)
        if not grams:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if len(self._buckets) > _MAX_CACHED_NGRAMS:
            self._buckets.clear()
        buckets = np.fromiter(map(self._buckets.__getitem__, grams), dtype=np.int64, count=len(grams))
        index, counts = np.unique(buckets, return_counts=True)
        values = counts.astype(np.float32)
        return index, values / np.sqrt(np.dot(values, values))

    def lexical(self, normalised_text: str) -> float:
        index, values = self.hashed(normalised_text)
        return _sigmoid(float(np.dot(self.lexical_coef[index], values)) + self.lexical_intercept)

    def semantic(self, embedding: np.ndarray) -> float:
        return _sigmoid(float(np.dot(self.semantic_coef, embedding)) + self.semantic_intercept)

    def calibrate(self, probability: float) -> float:
        """Maps the flag point to FLAG_SCORE and the block point to BLOCK_SCORE, keeping the
        order of scores: linear in log-odds between them, a plain shift outside."""
        z, low, high = _logit(probability), _logit(self.flag_point), _logit(self.block_point)
        flag, block = _logit(FLAG_SCORE), _logit(BLOCK_SCORE)
        if z <= low:
            return _sigmoid(flag + z - low)
        if z >= high:
            return _sigmoid(block + z - high)
        return _sigmoid(flag + (z - low) * (block - flag) / (high - low))

    def with_gate(self, benign_below: float, attack_above: float) -> "InjectionClassifier":
        """The same models with other gate thresholds (0 and above 1: always embed)."""
        clone = copy.copy(self)
        clone.gate_benign_below, clone.gate_attack_above = benign_below, attack_above
        return clone

    def gate_decides(self, lexical_score: float) -> bool:
        """True when the lexical score alone is confident enough to skip the embedding."""
        return lexical_score < self.gate_benign_below or lexical_score >= self.gate_attack_above
