"""Where the evaluation data lives, and reading JSON Lines."""

import json
import os
from pathlib import Path

from services.common.paths import REPO

DATA_DIR_ENV = "LLMSUITE_DATA_DIR"
CYBERSECEVAL = "cyberseceval_prompt_injection.jsonl"
# CyberSecEval has no split; it was split once (issue 13, round 2) into a tuning
# half and a held-out half, stratified by injection variant, with this seed.
CYBERSECEVAL_SPLIT_SEED = 13


def data_dir() -> Path:
    """$LLMSUITE_DATA_DIR/guardrails, else ../shared/data/guardrails next to the repo."""
    base = Path(os.environ[DATA_DIR_ENV]) if os.environ.get(DATA_DIR_ENV) else REPO.parent / "shared" / "data"
    return base / "guardrails"


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def cyberseceval_halves(rows: list[dict]) -> tuple[list[int], list[int]]:
    """(tuning, held-out) line numbers of CyberSecEval: per injection_variant (in sorted
    order), the variant's line numbers are shuffled by one generator seeded with
    CYBERSECEVAL_SPLIT_SEED and the first half (rounded down) tunes; the rest is
    held out, the only half that may be reported."""
    import numpy as np

    rng = np.random.default_rng(CYBERSECEVAL_SPLIT_SEED)
    tuning, held_out = [], []
    for variant in sorted({row["injection_variant"] for row in rows}):
        lines = [i for i, row in enumerate(rows) if row["injection_variant"] == variant]
        shuffled = [lines[i] for i in rng.permutation(len(lines))]
        tuning += shuffled[:len(lines) // 2]
        held_out += shuffled[len(lines) // 2:]
    return sorted(tuning), sorted(held_out)
