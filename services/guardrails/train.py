"""Builds the learned injection signal from the training split only.

    python -m services.guardrails.train [--data-dir DIR] [--out PATH]

Reads injection_train.jsonl (never the test split), embeds each prompt with the
suite's all-MiniLM-L6-v2 embedder (int8, as the service runs it), appends the cheap
signals of injection.py as features, picks the regularisation strength C by
5-fold stratified cross-validation on the training rows (F1 at score 0.5), fits
a logistic regression on all training rows and writes its weights as JSON.
Deterministic: fixed folds, a deterministic solver, weights rounded to 6 digits.
"""

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np

from services.guardrails.classifier import DEFAULT_PATH, InjectionClassifier
from services.guardrails.datasets import data_dir, read_jsonl
from services.guardrails.injection import FEATURE_NAMES, cheap_signals

log = logging.getLogger(__name__)

TRAIN_FILE = "injection_train.jsonl"
C_GRID = (1.0, 3.0, 10.0, 30.0)
FOLDS = 5


def _cross_validate(features: np.ndarray, labels: np.ndarray, c: float) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, precision_score, recall_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    model = LogisticRegression(C=c, max_iter=5000, class_weight="balanced")
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=0)
    proba = cross_val_predict(model, features, labels, cv=folds, method="predict_proba")[:, 1]
    predicted = (proba >= 0.5).astype(int)
    return {"f1": round(f1_score(labels, predicted), 4), "precision": round(precision_score(labels, predicted), 4),
            "recall": round(recall_score(labels, predicted), 4)}


def build(directory: Path) -> InjectionClassifier:
    from sklearn.linear_model import LogisticRegression

    from services.common.embeddings import MODEL_NAME, Embedder

    path = directory / TRAIN_FILE
    rows = read_jsonl(path)
    texts = [row["text"] for row in rows]
    labels = np.asarray([int(row["label"]) for row in rows])
    embedder = Embedder(quantize=True)
    embeddings = np.concatenate([embedder.embed(texts[i:i + 32]) for i in range(0, len(texts), 32)])
    cheap = np.stack([cheap_signals(text).features() for text in texts])
    features = np.hstack([embeddings, cheap])

    scores = {c: _cross_validate(features, labels, c) for c in C_GRID}
    for c, score in scores.items():
        log.info("C=%s cross-validated %s", c, score)
    best = max(C_GRID, key=lambda c: (scores[c]["f1"], -c))
    model = LogisticRegression(C=best, max_iter=5000, class_weight="balanced").fit(features, labels)
    metadata = {
        "trained_on": TRAIN_FILE,
        "train_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "rows": len(rows),
        "positives": int(labels.sum()),
        "embedding_model": MODEL_NAME,
        "embedding_int8": True,
        "C": best,
        "cross_validation": {str(c): score for c, score in scores.items()},
    }
    return InjectionClassifier(model.coef_[0], float(model.intercept_[0]), embeddings.shape[1],
                               FEATURE_NAMES, metadata)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="folder holding injection_train.jsonl")
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH, help="where to write the classifier JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    classifier = build(args.data_dir or data_dir())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(classifier.to_json(), encoding="utf-8")
    log.info("wrote %s (C=%s)", args.out, classifier.metadata["C"])


if __name__ == "__main__":
    main()
