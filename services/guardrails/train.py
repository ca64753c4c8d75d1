"""Builds the learned injection signals from the training split only.

    python -m services.guardrails.train [--data-dir DIR] [--out PATH] [--adapter PATH] [--layers N]

Reads injection_train.jsonl (never the test split). Lexical model: a logistic
regression on hashed character n-grams of the normalised prompt. Semantic model:
all-MiniLM-L6-v2 fine-tuned with low-rank adapters plus a logistic head on its
pooled vector of the normalised prompt (finetune.py). The pattern families are not
features (see classifier.py); the cascade that is scored applies them as the
service does.

Five-fold cross-validation on the training rows, grouped so that near-duplicates
(a row contained in another, or embeddings with cosine >= 0.9, as with the many
concatenated and translated rows) stay in one fold, picks jointly: the lexical
model's regularisation strength C, the lexical gate's thresholds and the
operating point (the learned score at which a prompt counts as an injection).
Objective: F1 of the whole cascade; among settings within 0.005 of the best, the
one that embeds fewest prompts, then the highest operating point. Both models are
then fitted on all training rows: the head and the settings go to the JSON file,
the adapters to the .npz file next to it. The adapters are fine-tuned five times
for the folds and once on all rows: about half an hour on two CPU cores (about
9 minutes with `--layers 1`, the encoder's first block only: the fast option).
Deterministic on one machine: fixed folds and seeds, weights rounded to 5 digits.
"""

import argparse
import hashlib
import itertools
import logging
import sys
from pathlib import Path

import numpy as np

from services.embedding.onnx_model import BLOCKS
from services.guardrails.classifier import DEFAULT_ADAPTER_PATH, DEFAULT_PATH, HashingSpec, InjectionClassifier
from services.guardrails.datasets import data_dir, read_jsonl
from services.guardrails.injection import cheap_signals

log = logging.getLogger(__name__)

TRAIN_FILE = "injection_train.jsonl"
# Benign requests written for this suite ("Write a poem about ...", "List ...",
# "Translate ...", long multi-part questions; English and German): the public
# training rows hold few plain task requests that are not attacks, and without
# these the models learned "an imperative is an attack". Added to every training
# fold and to the final fit; cross-validation scores only the public rows.
BENIGN_FILE = Path(__file__).parent / "data" / "benign_tasks.jsonl"
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


def _folds():
    from sklearn.model_selection import StratifiedGroupKFold

    return StratifiedGroupKFold(FOLDS, shuffle=True, random_state=0)


def _out_of_fold(fit_predict, labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each training row's probability from a model fitted without its fold:
    fit_predict(train_rows, test_rows) -> probabilities of test_rows."""
    predicted = np.zeros(len(labels))
    for train, test in _folds().split(np.zeros(len(labels)), labels, groups):
        predicted[test] = fit_predict(train, test)
    return predicted


def read_benign_tasks() -> list[str]:
    """The suite's own benign task requests (see BENIGN_FILE)."""
    return [row["text"] for row in read_jsonl(BENIGN_FILE)]


def _scores(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score, precision_score, recall_score

    return {"f1": round(f1_score(labels, predicted), 4), "precision": round(precision_score(labels, predicted), 4),
            "recall": round(recall_score(labels, predicted), 4)}


def build(directory: Path, adapter_out: Path, layers: int) -> InjectionClassifier:
    """Cross-validates, fits both models (the encoder cut to its first `layers`
    blocks), writes the adapters to `adapter_out` and returns the classifier (which
    records the adapters' sha256)."""
    from services.embedding.embedder import MODEL_NAME, Embedder, model_dir
    from services.embedding.onnx_model import sha256_file
    from services.guardrails import finetune

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

    import scipy.sparse

    normalised = [s.normalised for s in signals]
    extra = [cheap_signals(text).normalised for text in read_benign_tasks()]
    extra_labels = np.zeros(len(extra), dtype=labels.dtype)
    vectorizer = HASHING.vectorizer()
    lexical_x, extra_x = vectorizer.transform(normalised).tocsr(), vectorizer.transform(extra).tocsr()

    def lexical_fold(c: float):
        def fit_predict(train, test):
            model = _model(c).fit(scipy.sparse.vstack([lexical_x[train], extra_x]),
                                  np.concatenate([labels[train], extra_labels]))
            return model.predict_proba(lexical_x[test])[:, 1]
        return fit_predict

    def tuned_fold(train, test):
        model = finetune.fit(model_dir(), [normalised[i] for i in train] + extra,
                             np.concatenate([labels[train], extra_labels]), layers)
        log.info("fine-tuned a fold")
        return finetune.predict(model, model_dir(), [normalised[i] for i in test])

    lexical_p = {c: _out_of_fold(lexical_fold(c), labels, groups) for c in C_GRID}
    semantic = _out_of_fold(tuned_fold, labels, groups)

    candidates = []
    for lexical_c, low, high, point in itertools.product(C_GRID, GATE_BENIGN_GRID, GATE_ATTACK_GRID,
                                                         OPERATING_POINTS):
        lexical = lexical_p[lexical_c]
        skip = (lexical < low) | (lexical >= high)
        learned = np.where(skip, lexical, (lexical + semantic) / 2)
        predicted = np.where(decisive, rule_hit, rule_hit | (learned >= point))
        embedded = float(np.mean(~decisive & ~skip))
        candidates.append({"lexical_C": lexical_c, "gate_benign_below": low,
                           "gate_attack_above": high, "operating_point": point,
                           "embedded_fraction": round(embedded, 3), **_scores(labels, predicted)})
    best_f1 = max(c["f1"] for c in candidates)
    chosen = min((c for c in candidates if c["f1"] >= best_f1 - F1_TOLERANCE),
                 key=lambda c: (c["embedded_fraction"], -c["operating_point"], c["lexical_C"],
                                -c["gate_benign_below"], c["gate_attack_above"]))
    alone = {"lexical_alone": _scores(labels, lexical_p[chosen["lexical_C"]] >= 0.5),
             "fine_tuned_alone": _scores(labels, semantic >= 0.5)}
    log.info("chosen by cross-validation: %s (best F1 %.4f); learned signals alone at 0.5: %s", chosen, best_f1, alone)

    all_labels = np.concatenate([labels, extra_labels])
    lexical_model = _model(chosen["lexical_C"]).fit(scipy.sparse.vstack([lexical_x, extra_x]), all_labels)
    tuned = finetune.fit(model_dir(), normalised + extra, all_labels, layers)
    tuned.save_adapter(adapter_out)
    head, bias = tuned.head_weights()
    import sklearn

    metadata = {
        "trained_on": TRAIN_FILE,
        "train_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "rows": len(rows),
        "positives": int(labels.sum()),
        "benign_tasks": {"file": BENIGN_FILE.name, "rows": len(extra),
                         "sha256": hashlib.sha256(BENIGN_FILE.read_bytes()).hexdigest()},
        "near_duplicate_groups": len(set(groups)),
        "embedding_model": MODEL_NAME,
        "adapter": adapter_out.name,
        "adapter_sha256": sha256_file(adapter_out),
        "fine_tuning": {"layers": layers, "rank": finetune.RANK, "alpha": finetune.ALPHA,
                        "epochs": finetune.EPOCHS, "learning_rate": finetune.LEARNING_RATE, "batch": finetune.BATCH,
                        "seed": finetune.SEED},
        "scikit_learn": sklearn.__version__,
        "cross_validation": {"rules_alone": _scores(labels, rule_hit), **alone, "best_f1": best_f1,
                             "chosen": chosen},
    }
    return InjectionClassifier(
        hashing=HASHING,
        lexical_coef=lexical_model.coef_[0], lexical_intercept=float(lexical_model.intercept_[0]),
        embedding_dim=embeddings.shape[1], semantic_coef=head, semantic_intercept=bias,
        gate_benign_below=chosen["gate_benign_below"], gate_attack_above=chosen["gate_attack_above"],
        operating_point=chosen["operating_point"], metadata=metadata)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder holding injection_train.jsonl (default: the suite's data folder)")
    parser.add_argument("--out", type=Path, help=f"where to write the classifier JSON (default: {DEFAULT_PATH.name})")
    parser.add_argument("--adapter", type=Path,
                        help=f"where to write the fine-tuned adapters (default: {DEFAULT_ADAPTER_PATH.name})")
    parser.add_argument("--layers", type=int, choices=range(1, BLOCKS + 1), default=BLOCKS,
                        metavar=f"1..{BLOCKS}",
                        help="transformer blocks of the encoder to keep: fewer are faster and less accurate")
    args = parser.parse_args(argv)
    if args.layers < BLOCKS and (args.out is None or args.adapter is None):
        parser.error("--layers below the model's blocks needs --out and --adapter: the default files are the "
                     "whole model's")
    args.out = args.out or DEFAULT_PATH
    args.adapter = args.adapter or DEFAULT_ADAPTER_PATH
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.adapter.parent.mkdir(parents=True, exist_ok=True)
    classifier = build(args.data_dir or data_dir(), args.adapter, args.layers)
    args.out.write_text(classifier.to_json(), encoding="utf-8")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
