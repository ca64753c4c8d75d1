"""Builds the learned injection signals from the training split only.

    python -m services.guardrails.train [--data-dir DIR] [--out PATH]

Reads injection_train.jsonl (never the test split). Features: the cheap signals of
injection.py, plus hashed character n-grams of the normalised prompt (lexical
model) or the prompt's all-MiniLM-L6-v2 embedding, int8 as the service runs it
(semantic model). Five-fold stratified cross-validation on the training rows picks
each model's regularisation strength C and the lexical gate's thresholds (F1 of
the whole cascade at score 0.5; ties go to fewer embeddings); both models are
then fitted on all training rows and written as JSON. Deterministic: fixed folds,
deterministic solvers, weights rounded to 5 digits.
"""

import argparse
import hashlib
import logging
import sys
from pathlib import Path

import numpy as np

from services.guardrails.classifier import DEFAULT_PATH, HashingSpec, InjectionClassifier
from services.guardrails.datasets import data_dir, read_jsonl
from services.guardrails.injection import FEATURE_NAMES, cheap_signals

log = logging.getLogger(__name__)

TRAIN_FILE = "injection_train.jsonl"
C_GRID = (1.0, 3.0, 10.0, 30.0)
GATE_BENIGN_GRID = (0.0, 0.05, 0.1, 0.15)
GATE_ATTACK_GRID = (0.9, 0.95, 1.01)  # 1.01: never skip on a confident attack
FOLDS = 5
HASHING = HashingSpec(n_features=2 ** 14, ngram_min=3, ngram_max=5)


def _model(c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=5000, class_weight="balanced")


def _out_of_fold(features, labels: np.ndarray, c: float) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=0)
    return cross_val_predict(_model(c), features, labels, cv=folds, method="predict_proba")[:, 1]


def _scores(labels: np.ndarray, score: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score, precision_score, recall_score

    predicted = (score >= 0.5).astype(int)
    return {"f1": round(f1_score(labels, predicted), 4), "precision": round(precision_score(labels, predicted), 4),
            "recall": round(recall_score(labels, predicted), 4)}


def _pick_c(features, labels, rule, decisive) -> tuple[float, np.ndarray, dict]:
    results = {}
    for c in C_GRID:
        proba = _out_of_fold(features, labels, c)
        results[c] = (proba, _scores(labels, np.where(decisive, rule, np.maximum(rule, proba))))
        log.info("  C=%s cross-validated %s", c, results[c][1])
    best = max(C_GRID, key=lambda c: (results[c][1]["f1"], -c))
    return best, results[best][0], {str(c): score for c, (_, score) in results.items()}


def build(directory: Path) -> InjectionClassifier:
    from scipy.sparse import csr_matrix, hstack

    from services.common.embeddings import MODEL_NAME, Embedder

    path = directory / TRAIN_FILE
    rows = read_jsonl(path)
    texts = [row["text"] for row in rows]
    labels = np.asarray([int(row["label"]) for row in rows])
    signals = [cheap_signals(text) for text in texts]
    cheap = np.stack([s.features() for s in signals])
    rule = np.asarray([s.rule_score for s in signals])
    decisive = np.asarray([s.decisive for s in signals])
    log.info("rules alone: %s", _scores(labels, rule))

    hashed = HASHING.vectorizer().transform([s.normalised for s in signals])
    lexical_x = hstack([hashed, csr_matrix(cheap)]).tocsr()
    log.info("lexical model:")
    lexical_c, lexical_p, lexical_cv = _pick_c(lexical_x, labels, rule, decisive)

    embedder = Embedder(quantize=True)
    embeddings = np.concatenate([embedder.embed(texts[i:i + 32]) for i in range(0, len(texts), 32)])
    semantic_x = np.hstack([embeddings, cheap])
    log.info("semantic model:")
    semantic_c, semantic_p, semantic_cv = _pick_c(semantic_x, labels, rule, decisive)

    gates = {}
    for low in GATE_BENIGN_GRID:
        for high in GATE_ATTACK_GRID:
            skip = (lexical_p < low) | (lexical_p >= high)
            learned = np.where(skip, lexical_p, (lexical_p + semantic_p) / 2)
            final = np.where(decisive, rule, np.maximum(rule, learned))
            embedded = float(np.mean(~decisive & ~skip))
            gates[(low, high)] = (_scores(labels, final), embedded)
    low, high = max(gates, key=lambda key: (gates[key][0]["f1"], -gates[key][1]))
    log.info("gate: benign below %s, attack from %s: %s, embeddings for %.0f%% of prompts",
             low, high, gates[(low, high)][0], 100 * gates[(low, high)][1])

    lexical_model = _model(lexical_c).fit(lexical_x, labels)
    semantic_model = _model(semantic_c).fit(semantic_x, labels)
    import sklearn

    metadata = {
        "trained_on": TRAIN_FILE,
        "train_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "rows": len(rows),
        "positives": int(labels.sum()),
        "embedding_model": MODEL_NAME,
        "embedding_int8": True,
        "scikit_learn": sklearn.__version__,
        "lexical_C": lexical_c,
        "semantic_C": semantic_c,
        "cross_validation": {
            "rules": _scores(labels, rule),
            "lexical": lexical_cv,
            "semantic": semantic_cv,
            "cascade": {**gates[(low, high)][0], "embedded_fraction": round(gates[(low, high)][1], 3)},
        },
    }
    return InjectionClassifier(
        feature_names=FEATURE_NAMES, hashing=HASHING,
        lexical_coef=lexical_model.coef_[0], lexical_intercept=float(lexical_model.intercept_[0]),
        embedding_dim=embeddings.shape[1], semantic_coef=semantic_model.coef_[0],
        semantic_intercept=float(semantic_model.intercept_[0]),
        gate_benign_below=low, gate_attack_above=high, metadata=metadata)


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
