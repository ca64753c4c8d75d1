"""Where the evaluation data lives, and reading JSON Lines."""

import json
import os
from pathlib import Path

from services.common.paths import REPO

DATA_DIR_ENV = "LLMSUITE_DATA_DIR"


def data_dir() -> Path:
    """$LLMSUITE_DATA_DIR/guardrails, else ../shared/data/guardrails next to the repo."""
    base = Path(os.environ[DATA_DIR_ENV]) if os.environ.get(DATA_DIR_ENV) else REPO.parent / "shared" / "data"
    return base / "guardrails"


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
