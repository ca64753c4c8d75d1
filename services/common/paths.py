"""The repository root: relative paths in settings are relative to it, wherever a
process was started from."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def repo_path(value: str | Path) -> Path:
    """`value` as a path; a relative one is taken from the repository root."""
    path = Path(value)
    return path if path.is_absolute() else REPO / path
