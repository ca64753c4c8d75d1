"""Builds the learned injection signals from the training split only.

    python -m services.guardrails.train [--data-dir DIR] [--out PATH]

Reads injection_train.jsonl (never the test split). Features: hashed character
n-grams of the normalised prompt (lexical model) or the prompt's all-MiniLM-L6-v2
embedding, fp32 as the service computes it (semantic model). The pattern families
are not features (see classifier.py); the cascade that is scored applies them as
the service does.

Five-fold cross-validation on the training rows, grouped so that near-duplicates
(a row contained in another, or embeddings with cosine >= 0.9, as with the many
concatenated and translated rows) stay in one fold, picks jointly: each model's
regularisation strength C, the lexical gate's thresholds and the operating point
(the learned score at which a prompt counts as an injection). Objective: F1 of the
whole cascade; among settings within 0.005 of the best, the one that embeds
fewest prompts, then the highest operating point. Both models are then fitted on
all training rows and written as JSON. Deterministic: fixed folds, deterministic
solvers, weights rounded to 5 digits.
"""

import argparse
import hashlib
import itertools
import logging
import sys
from pathlib import Path

import numpy as np

from services.guardrails.classifier import DEFAULT_PATH, HashingSpec, InjectionClassifier
from services.guardrails.datasets import data_dir, read_jsonl
from services.guardrails.injection import cheap_signals

log = logging.getLogger(__name__)

TRAIN_FILE = "injection_train.jsonl"
C_GRID = (3.0, 10.0, 30.0)
GATE_BENIGN_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
GATE_ATTACK_GRID = (0.8, 0.85, 0.9, 0.95, 1.01)  # 1.01: never skip on a confident attack
OPERATING_POINTS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
F1_TOLERANCE = 0.005
FOLDS = 5
# Rows sharing this many leading or trailing characters are near-duplicates.
_SHARED_CHARS = 30
_DUPLICATE_COSINE = 0.9
HASHING = HashingSpec(n_features=2 ** 14, ngram_min=3, ngram_max=5)


def _model(c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=5000, class_weight="balanced")


def near_duplicate_groups(texts: list[str], embeddings: np.ndarray) -> np.ndarray:
    """Group id per row: connected components of containment or high cosine similarity."""
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    lowered = [text.lower() for text in texts]
    similar = embeddings @ embeddings.T
    for i, j in itertools.combinations(range(len(texts)), 2):
        a, b = lowered[i], lowered[j]
        shared = any(len(x) >= _SHARED_CHARS and (x[:_SHARED_CHARS] in y or x[-_SHARED_CHARS:] in y)
                     for x, y in ((a, b), (b, a)))
        if shared or similar[i, j] >= _DUPLICATE_COSINE:
            parent[root(i)] = root(j)
    return np.asarray([root(i) for i in range(len(texts))])


def _out_of_fold(features, labels: np.ndarray, groups: np.ndarray, c: float) -> np.ndarray:
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

    folds = StratifiedGroupKFold(FOLDS, shuffle=True, random_state=0)
    return cross_val_predict(_model(c), features, labels, cv=folds, groups=groups, method="predict_proba")[:, 1]


def _scores(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score, precision_score, recall_score

    return {"f1": round(f1_score(labels, predicted), 4), "precision": round(precision_score(labels, predicted), 4),
            "recall": round(recall_score(labels, predicted), 4)}


def build(directory: Path) -> InjectionClassifier:
    from services.common.embeddings import MODEL_NAME, Embedder

    path = directory / TRAIN_FILE
    rows = read_jsonl(path)
    texts = [row["text"] for row in rows]
    labels = np.asarray([int(row["label"]) for row in rows])
    signals = [cheap_signals(text) for text in texts]
    rule_hit = np.asarray([s.rule_score >= 0.5 for s in signals])
    decisive = np.asarray([s.decisive for s in signals])
    log.info("rules alone: %s", _scores(labels, rule_hit))

    embedder = Embedder(quantize=False)
    embeddings = np.concatenate([embedder.embed(texts[i:i + 32]) for i in range(0, len(texts), 32)])
    groups = near_duplicate_groups(texts, embeddings)
    log.info("%d rows in %d near-duplicate groups", len(texts), len(set(groups)))

    lexical_x = HASHING.vectorizer().transform([s.normalised for s in signals]).tocsr()
    semantic_x = embeddings
    lexical_p = {c: _out_of_fold(lexical_x, labels, groups, c) for c in C_GRID}
    semantic_p = {c: _out_of_fold(semantic_x, labels, groups, c) for c in C_GRID}

    candidates = []
    for lexical_c, semantic_c, low, high, point in itertools.product(
            C_GRID, C_GRID, GATE_BENIGN_GRID, GATE_ATTACK_GRID, OPERATING_POINTS):
        lexical, semantic = lexical_p[lexical_c], semantic_p[semantic_c]
        skip = (lexical < low) | (lexical >= high)
        learned = np.where(skip, lexical, (lexical + semantic) / 2)
        predicted = np.where(decisive, rule_hit, rule_hit | (learned >= point))
        embedded = float(np.mean(~decisive & ~skip))
        candidates.append({"lexical_C": lexical_c, "semantic_C": semantic_c, "gate_benign_below": low,
                           "gate_attack_above": high, "operating_point": point,
                           "embedded_fraction": round(embedded, 3), **_scores(labels, predicted)})
    best_f1 = max(c["f1"] for c in candidates)
    chosen = min((c for c in candidates if c["f1"] >= best_f1 - F1_TOLERANCE),
                 key=lambda c: (c["embedded_fraction"], -c["operating_point"], c["lexical_C"], c["semantic_C"],
                                -c["gate_benign_below"], c["gate_attack_above"]))
    log.info("chosen by cross-validation: %s (best F1 %.4f)", chosen, best_f1)

    lexical_model = _model(chosen["lexical_C"]).fit(lexical_x, labels)
    semantic_model = _model(chosen["semantic_C"]).fit(semantic_x, labels)
    import sklearn

    metadata = {
        "trained_on": TRAIN_FILE,
        "train_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "rows": len(rows),
        "positives": int(labels.sum()),
        "near_duplicate_groups": len(set(groups)),
        "embedding_model": MODEL_NAME,
        "embedding_precision": "fp32",
        "scikit_learn": sklearn.__version__,
        "cross_validation": {"rules_alone": _scores(labels, rule_hit), "best_f1": best_f1, "chosen": chosen},
    }
    return InjectionClassifier(
        hashing=HASHING,
        lexical_coef=lexical_model.coef_[0], lexical_intercept=float(lexical_model.intercept_[0]),
        embedding_dim=embeddings.shape[1], semantic_coef=semantic_model.coef_[0],
        semantic_intercept=float(semantic_model.intercept_[0]),
        gate_benign_below=chosen["gate_benign_below"], gate_attack_above=chosen["gate_attack_above"],
        operating_point=chosen["operating_point"], metadata=metadata)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder holding injection_train.jsonl (default: the suite's data folder)")
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH, help="where to write the classifier JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    classifier = build(args.data_dir or data_dir())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(classifier.to_json(), encoding="utf-8")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
