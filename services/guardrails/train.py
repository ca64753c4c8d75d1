"""Builds the learned injection signals from the tunable data only.

    python -m services.guardrails.train [--data-dir DIR] [--out PATH] [--adapter PATH] [--layers N]
                                        [--keep-adapter PATH]

Reads the tunable files (injection_train.jsonl, wildguard_benign_train.jsonl,
piguard_valid.jsonl; never a report-only set) and the suite's own rows in
services/guardrails/data (SOURCES). Lexical model: a logistic regression on
hashed character n-grams of the normalised prompt. Semantic model:
all-MiniLM-L6-v2 fine-tuned with low-rank adapters plus a logistic head on its
pooled vector of the normalised prompt (finetune.py). The pattern families are not
features (see classifier.py); the cascade that is scored applies them as the
service does.

Cross-validation (FOLDS folds over all rows, grouped so that near-duplicates, a
row contained in another or embeddings with cosine >= 0.9, stay in one fold)
picks jointly the lexical model's C, the lexical gate's thresholds and the block
point: the learned probability from which a prompt is blocked. Objective: F1 of
the blocks of the whole cascade (patterns included) over every row, among the
settings that block at most MAX_BENIGN_BLOCKED of the benign rows; among those
within F1_TOLERANCE of the best, the one that embeds fewest prompts, then the
highest block point. Then the flag point (below the block point): the best F1 of
flag-or-block. For the record only, the best F1 of blocks under other caps
(CAP_CURVE): what the chosen cap costs in detection. Both models are then fitted
on all rows: the head and the settings go to the JSON file, the adapters to the
.npz file next to it. The adapters are fine-tuned once per fold and once on all
rows: about 40 minutes on two CPU cores (2,342 rows).
With --keep-adapter the encoder is not fine-tuned: those adapters are kept, the
semantic head is refitted per fold and on all rows (a logistic regression on the
int8 vectors), and the benign cap must also hold on the rows of sources the kept
adapters were not trained on (their other rows score optimistically).
Deterministic on one machine: fixed folds and seeds, weights rounded to 5 digits.
"""

import argparse
import hashlib
import itertools
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.embedding.onnx_model import BLOCKS
from services.guardrails.classifier import DEFAULT_ADAPTER_PATH, DEFAULT_PATH, HashingSpec, InjectionClassifier
from services.guardrails.config import BLOCK_SCORE, FLAG_SCORE
from services.guardrails.datasets import (
    CYBERSECEVAL, CYBERSECEVAL_SPLIT_SEED, cyberseceval_halves, data_dir, read_jsonl,
)
from services.guardrails.injection import DECISIVE_SCORE, cheap_signals

log = logging.getLogger(__name__)

_OWN = Path(__file__).parent / "data"
# (file, folder) of every training source: the public tunable files, then the
# suite's own rows. benign_tasks.jsonl: plain task requests ("Write a poem about
# ...", "List ...", long multi-part questions), without which the models learned
# "an imperative is an attack". benign_trigger_words.jsonl: ordinary requests that
# use the words attacks use (ignore, pretend, act as, instructions, system prompt,
# jailbreak, developer mode, decode this base64, ...), in code, essays, games,
# translations, summaries and typos, several languages. attack_styles.jsonl:
# attacks in the styles of the pattern families and beyond them (indirect
# injections in pasted text, output manipulation, payload splitting).
# Round 2 (issue 13): benign_chit_chat.jsonl, short conversational turns
# (greetings, check-ins, thanks, "are you there?", "continue", "what?"), which the
# first models blocked ("Are you back?" 0.96) because nothing like them was
# benign in training; attacks_round2.jsonl, attacks in CyberSecEval's families
# (secret and personal-data extraction, persuasion, fake system modes,
# virtualisation, output-format tricks, indirect injections in documents, payload
# splitting, smuggled tokens, repeated tokens, "ignore the <document>" in many
# languages); benign_round2.jsonl, their benign look-alikes (password help,
# "imagine a world where", format requests, pasted documents, decoding puzzles).
# The tuning half of CyberSecEval (user inputs, all attacks; datasets.py) is
# read from the data folder as the fourth public source.
PUBLIC_SOURCES = ("injection_train.jsonl", "wildguard_benign_train.jsonl", "piguard_valid.jsonl")
CYBERSECEVAL_TUNING = "cyberseceval_prompt_injection.jsonl (tuning half)"
OWN_SOURCES = ("benign_tasks.jsonl", "benign_trigger_words.jsonl", "attack_styles.jsonl", "benign_chit_chat.jsonl",
               "attacks_round2.jsonl", "benign_round2.jsonl")
C_GRID = (3.0, 10.0, 30.0)
GATE_BENIGN_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)
GATE_ATTACK_GRID = (0.8, 0.85, 0.9, 0.95, 1.01)  # 1.01: never skip on a confident attack
POINTS = tuple(round(0.05 * i, 2) for i in range(2, 20))  # 0.10 ... 0.95
# "Block only when confident": the block point may block at most this share of
# the benign rows in cross-validation.
MAX_BENIGN_BLOCKED = 0.02
# Other caps, for the record only (nothing is chosen by them): the best F1 of blocks that
# cross-validation finds when more benign rows may be blocked, i.e. what the cap costs.
CAP_CURVE = (0.01, 0.02, 0.03, 0.05, 0.1)
F1_TOLERANCE = 0.005
FOLDS = 3
# Rows sharing this many leading or trailing characters are near-duplicates.
_SHARED_CHARS = 30
_DUPLICATE_COSINE = 0.9
# Inverse regularisation of the refitted semantic head (--keep-adapter).
HEAD_C = 10.0
HASHING = HashingSpec(n_features=2 ** 14, ngram_min=3, ngram_max=5)


def _model(c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=5000, class_weight="balanced")


def _head():
    """The semantic head refitted on a kept encoder's (unit-length) vectors."""
    return _model(HEAD_C)


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
    """Each row's probability from a model fitted without its fold:
    fit_predict(train_rows, test_rows) -> probabilities of test_rows."""
    predicted = np.zeros(len(labels))
    for train, test in _folds().split(np.zeros(len(labels)), labels, groups):
        predicted[test] = fit_predict(train, test)
    return predicted


@dataclass
class TrainingData:
    texts: list[str]
    labels: np.ndarray
    source: np.ndarray  # file name per row
    files: dict[str, dict]  # file name -> rows, attacks, sha256


def _cyberseceval_tuning(directory: Path) -> list[dict]:
    """The tuning half of CyberSecEval as training rows: each user input is an attack."""
    rows = read_jsonl(directory / CYBERSECEVAL)
    tuning, _ = cyberseceval_halves(rows)
    return [{"text": rows[i]["user_input"], "label": 1} for i in tuning]


def read_sources(directory: Path) -> TrainingData:
    texts, labels, source, files = [], [], [], {}
    origins = ([(n, directory / n, "public (tunable)") for n in PUBLIC_SOURCES]
               + [(CYBERSECEVAL_TUNING, directory / CYBERSECEVAL,
                   f"public, tuning half (split seed {CYBERSECEVAL_SPLIT_SEED}); the other half is held out")]
               + [(n, _OWN / n, "written for this suite") for n in OWN_SOURCES])
    for name, path, origin in origins:
        rows = _cyberseceval_tuning(directory) if name == CYBERSECEVAL_TUNING else read_jsonl(path)
        texts += [row["text"] for row in rows]
        labels += [int(row["label"]) for row in rows]
        source += [name] * len(rows)
        files[name] = {"rows": len(rows), "attacks": sum(int(row["label"]) for row in rows),
                       "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "origin": origin}
    return TrainingData(texts, np.asarray(labels), np.asarray(source), files)


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _scores(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """F1, precision and recall of `predicted` (as scikit-learn's, 0 where undefined), and the
    share of benign rows predicted; counted directly: the selection scores thousands of settings."""
    predicted = np.asarray(predicted, dtype=bool)
    attacks = labels == 1
    hits, flagged, positives = int((predicted & attacks).sum()), int(predicted.sum()), int(attacks.sum())
    return {"f1": _ratio(2 * hits, flagged + positives), "precision": _ratio(hits, flagged),
            "recall": _ratio(hits, positives), "benign_blocked": round(float(predicted[~attacks].mean()), 4)}


@dataclass
class Cascade:
    """Out-of-fold inputs of the cascade: rule scores and both learned probabilities."""

    labels: np.ndarray
    rule: np.ndarray
    lexical: dict[float, np.ndarray]  # C -> probability
    semantic: np.ndarray
    # Rows whose semantic probability comes from an encoder that never saw them: all
    # rows when the encoder is fine-tuned per fold; with kept adapters only the rows
    # of sources added after they were trained (the others score optimistically).
    unseen: np.ndarray

    def learned(self, c: float, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
        """(learned probability, whether the encoder ran) per row for one gate."""
        lexical = self.lexical[c]
        skip = (lexical < low) | (lexical >= high)
        return np.where(skip, lexical, (lexical + self.semantic) / 2), ~skip & (self.rule < DECISIVE_SCORE)

    def over(self, learned: np.ndarray, point: float, rule_score: float) -> np.ndarray:
        """Rows at or over `point` (learned) or `rule_score` (patterns), as the service decides."""
        return (self.rule >= rule_score) | ((self.rule < DECISIVE_SCORE) & (learned >= point))


def choose_block(cascade: Cascade, cap: float = MAX_BENIGN_BLOCKED) -> dict:
    """The gate, lexical C and block point with the best F1 of blocks among the settings that
    block at most `cap` of the benign rows (also of those the encoder never saw)."""
    candidates = []
    for c, low, high, point in itertools.product(cascade.lexical, GATE_BENIGN_GRID, GATE_ATTACK_GRID, POINTS):
        learned, embedded = cascade.learned(c, low, high)
        blocked = cascade.over(learned, point, BLOCK_SCORE)
        scores = _scores(cascade.labels, blocked)
        unseen_benign = cascade.unseen & (cascade.labels == 0)
        unseen_blocked = round(float(blocked[unseen_benign].mean()), 4)
        # The cap holds on all benign rows and on those the encoder never saw.
        if scores["benign_blocked"] <= cap and unseen_blocked <= cap:
            candidates.append({"lexical_C": c, "gate_benign_below": low, "gate_attack_above": high,
                               "block_point": point, "embedded_fraction": round(float(embedded.mean()), 3),
                               **scores, "unseen_benign_blocked": unseen_blocked})
    best_f1 = max(c["f1"] for c in candidates)
    chosen = min((c for c in candidates if c["f1"] >= best_f1 - F1_TOLERANCE),
                 key=lambda c: (c["embedded_fraction"], -c["block_point"], c["lexical_C"],
                                -c["gate_benign_below"], c["gate_attack_above"]))
    return {**chosen, "best_f1": best_f1}


def cap_curve(cascade: Cascade) -> dict[str, dict]:
    """Best F1 of blocks (with its precision, recall, benign rows blocked) per cap on the
    benign rows blocked: how much detection the chosen cap gives up."""
    keys = ("f1", "precision", "recall", "benign_blocked", "block_point")
    return {f"{cap:.2f}": {key: chosen[key] for key in keys}
            for cap, chosen in ((cap, choose_block(cascade, cap)) for cap in CAP_CURVE)}


def choose_flag(cascade: Cascade, block: dict) -> dict:
    learned, _ = cascade.learned(block["lexical_C"], block["gate_benign_below"], block["gate_attack_above"])
    candidates = [{"flag_point": point, **_scores(cascade.labels, cascade.over(learned, point, FLAG_SCORE))}
                  for point in POINTS if point < block["block_point"]]
    return max(candidates, key=lambda c: (c["f1"], c["flag_point"]))


def per_source(data: TrainingData, cascade: Cascade, block: dict, flag: dict) -> dict:
    """Cross-validated block and flag rates per training file, at the chosen settings."""
    learned, _ = cascade.learned(block["lexical_C"], block["gate_benign_below"], block["gate_attack_above"])
    blocked = cascade.over(learned, block["block_point"], BLOCK_SCORE)
    flagged = cascade.over(learned, flag["flag_point"], FLAG_SCORE) & ~blocked
    result = {}
    for name in data.files:
        rows = data.source == name
        for label, kind in ((0, "benign"), (1, "attacks")):
            chosen = rows & (data.labels == label)
            if chosen.any():
                result[f"{name} {kind}"] = {"rows": int(chosen.sum()), "blocked": int(blocked[chosen].sum()),
                                            "flagged": int(flagged[chosen].sum())}
    return result


def _adapter_sources(adapter: Path) -> list[str]:
    """The sources that the kept adapters were fine-tuned on, from the classifier file
    written with them (the shipped one, or one beside the adapters)."""
    from services.embedding.onnx_model import sha256_file

    for candidate in (adapter.with_name(DEFAULT_PATH.name), DEFAULT_PATH):
        if candidate.is_file():
            metadata = json.loads(candidate.read_text(encoding="utf-8")).get("metadata") or {}
            if metadata.get("adapter_sha256") == sha256_file(adapter):
                return metadata.get("adapter_trained_on") or sorted(metadata["sources"])
    raise SystemExit(f"{adapter}: no classifier file beside it records these adapters; cannot tell which rows "
                     "they were trained on")


def build(directory: Path, adapter_out: Path, layers: int, keep_adapter: Path | None = None) -> InjectionClassifier:
    """Cross-validates, fits both models (the encoder cut to its first `layers`
    blocks), writes the adapters to `adapter_out` and returns the classifier (which
    records the adapters' sha256). With `keep_adapter` the encoder is not
    fine-tuned: those adapters are kept and only the semantic head is refitted."""
    from services.embedding.embedder import MODEL_NAME, Embedder, model_dir
    from services.embedding.onnx_model import sha256_file
    from services.guardrails import finetune

    data = read_sources(directory)
    labels = data.labels
    signals = [cheap_signals(text) for text in data.texts]
    rule = np.asarray([s.rule_score for s in signals])
    log.info("%d rows (%d attacks) from %s", len(labels), labels.sum(), ", ".join(data.files))
    log.info("rules alone (block): %s", _scores(labels, rule >= BLOCK_SCORE))

    embedder = Embedder(quantize=False)
    embeddings = np.concatenate([embedder.embed(data.texts[i:i + 32]) for i in range(0, len(labels), 32)])
    groups = near_duplicate_groups(data.texts, embeddings)
    log.info("%d rows in %d near-duplicate groups", len(labels), len(set(groups)))

    normalised = [s.normalised for s in signals]
    lexical_x = HASHING.vectorizer().transform(normalised).tocsr()

    def lexical_fold(c: float):
        def fit_predict(train, test):
            return _model(c).fit(lexical_x[train], labels[train]).predict_proba(lexical_x[test])[:, 1]
        return fit_predict

    def tuned_fold(train, test):
        model = finetune.fit(model_dir(), [normalised[i] for i in train], labels[train], layers)
        log.info("fine-tuned a fold")
        return finetune.predict(model, model_dir(), [normalised[i] for i in test])

    if keep_adapter is None:
        # Each fold's encoder is fine-tuned without the rows it scores: all are unseen.
        semantic_out_of_fold = _out_of_fold(tuned_fold, labels, groups)
        adapter_sources = sorted(data.files)
        unseen = np.ones(len(labels), dtype=bool)
    else:
        adapter_sources = _adapter_sources(keep_adapter)
        unseen = ~np.isin(data.source, adapter_sources)
        # The encoder stays as trained; only the head is refitted, per fold, on the
        # vectors the service computes (int8, one prompt per pass).
        tuned_embedder = Embedder(quantize=True, threads=2, adapter=keep_adapter)
        tuned_x = np.concatenate([tuned_embedder.embed([text]) for text in normalised])
        log.info("embedded %d rows with the kept encoder", len(labels))

        def head_fold(train, test):
            return _head().fit(tuned_x[train], labels[train]).predict_proba(tuned_x[test])[:, 1]
        semantic_out_of_fold = _out_of_fold(head_fold, labels, groups)
    cascade = Cascade(labels, rule, {c: _out_of_fold(lexical_fold(c), labels, groups) for c in C_GRID},
                      semantic_out_of_fold, unseen)
    block = choose_block(cascade)
    flag = choose_flag(cascade, block)
    alone = {"lexical_alone": _scores(labels, cascade.lexical[block["lexical_C"]] >= 0.5),
             "fine_tuned_alone": _scores(labels, cascade.semantic >= 0.5)}
    sources = per_source(data, cascade, block, flag)
    curve = cap_curve(cascade)
    log.info("chosen by cross-validation: block %s, flag %s; learned signals alone at 0.5: %s; per source: %s; "
             "best blocks per benign cap: %s", block, flag, alone, sources, curve)

    lexical_model = _model(block["lexical_C"]).fit(lexical_x, labels)
    if keep_adapter is None:
        tuned = finetune.fit(model_dir(), normalised, labels, layers)
        tuned.save_adapter(adapter_out)
        head, bias = tuned.head_weights()
        fine_tuning = {"layers": layers, "rank": finetune.RANK, "alpha": finetune.ALPHA, "epochs": finetune.EPOCHS,
                       "learning_rate": finetune.LEARNING_RATE, "batch": finetune.BATCH, "seed": finetune.SEED}
    else:
        if keep_adapter.resolve() != adapter_out.resolve():
            shutil.copyfile(keep_adapter, adapter_out)
        fitted = _head().fit(tuned_x, labels)
        head, bias = fitted.coef_[0].astype(np.float32), float(fitted.intercept_[0])
        fine_tuning = {"kept": f"adapters kept from an earlier training (sha256 {sha256_file(adapter_out)}); "
                               "the head was refitted: logistic regression on the int8 vectors",
                       "head_C": HEAD_C}
    import sklearn

    metadata = {
        "sources": data.files,
        "rows": len(labels),
        "positives": int(labels.sum()),
        "near_duplicate_groups": len(set(groups)),
        "embedding_model": MODEL_NAME,
        "adapter": adapter_out.name,
        "adapter_sha256": sha256_file(adapter_out),
        "adapter_trained_on": adapter_sources,
        "fine_tuning": fine_tuning,
        "scikit_learn": sklearn.__version__,
        "cross_validation": {"folds": FOLDS, "rules_alone": _scores(labels, rule >= BLOCK_SCORE), **alone,
                             "block": block, "flag": flag, "per_source": sources, "benign_cap_curve": curve},
    }
    return InjectionClassifier(
        hashing=HASHING,
        lexical_coef=lexical_model.coef_[0], lexical_intercept=float(lexical_model.intercept_[0]),
        embedding_dim=embeddings.shape[1], semantic_coef=head, semantic_intercept=bias,
        gate_benign_below=block["gate_benign_below"], gate_attack_above=block["gate_attack_above"],
        flag_point=flag["flag_point"], block_point=block["block_point"], metadata=metadata)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder holding the public tunable files (default: the suite's data folder)")
    parser.add_argument("--out", type=Path, help=f"where to write the classifier JSON (default: {DEFAULT_PATH.name})")
    parser.add_argument("--adapter", type=Path,
                        help=f"where to write the fine-tuned adapters (default: {DEFAULT_ADAPTER_PATH.name})")
    parser.add_argument("--layers", type=int, choices=range(1, BLOCKS + 1), default=BLOCKS,
                        metavar=f"1..{BLOCKS}",
                        help="transformer blocks of the encoder to keep: fewer are faster and less accurate")
    parser.add_argument("--keep-adapter", type=Path, default=None,
                        help="do not fine-tune the encoder: keep these adapters (e.g. the shipped ones) and refit "
                             "only the semantic head (minutes instead of about 40)")
    args = parser.parse_args(argv)
    if args.layers < BLOCKS and (args.out is None or args.adapter is None):
        parser.error("--layers below the model's blocks needs --out and --adapter: the default files are the "
                     "whole model's")
    args.out = args.out or DEFAULT_PATH
    args.adapter = args.adapter or DEFAULT_ADAPTER_PATH
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.adapter.parent.mkdir(parents=True, exist_ok=True)
    classifier = build(args.data_dir or data_dir(), args.adapter, args.layers, args.keep_adapter)
    args.out.write_text(classifier.to_json(), encoding="utf-8")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
