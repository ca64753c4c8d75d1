"""A model's settings: the `parameters` of its config.pbtxt, per version overridable.

Triton versions of one model share config.pbtxt. A version folder may hold
`parameters.json`, a flat object of the same keys, that overrides them for that
version only: two versions of a model (a canary and the stable one) can then differ
in one setting while sharing everything else.
"""

import json
from dataclasses import dataclass, fields
from pathlib import Path

VERSION_PARAMETERS = "parameters.json"


class SettingsError(Exception):
    """A parameter is missing, unknown or out of range."""


@dataclass(frozen=True)
class ModelSettings:
    description: str
    # Where the GGUF file is: weights_path (relative to the model's folder) when set,
    # else weights_file inside the installed Python package weights_package.
    weights_package: str
    weights_file: str
    weights_sha256: str
    weights_install: str
    weights_path: str
    # Requests decoded together (llama.cpp's parallel slots); more wait for a slot.
    slots: int
    # Prompt plus generated tokens one request may hold (each slot's context).
    context_tokens: int
    threads: int


_DEFAULTS = {"description": "", "weights_path": "", "threads": "2"}
_NUMBERS = {"slots": 1, "context_tokens": 64, "threads": 1}  # name -> smallest value


def load(parameters: dict[str, str], version_dir: Path) -> ModelSettings:
    """Settings from config.pbtxt's parameters and the version's parameters.json."""
    values = {**_DEFAULTS, **parameters}
    overrides_file = version_dir / VERSION_PARAMETERS
    if overrides_file.is_file():
        try:
            overrides = json.loads(overrides_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise SettingsError(f"{overrides_file} is not valid JSON: {err}") from None
        if not isinstance(overrides, dict):
            raise SettingsError(f"{overrides_file} must hold one JSON object")
        values.update({key: str(value) for key, value in overrides.items()})
    names = [field.name for field in fields(ModelSettings)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise SettingsError(f"unknown parameters {unknown}; known: {names}")
    missing = [name for name in names if name not in values]
    if missing:
        raise SettingsError(f"missing parameters {missing}")
    typed: dict[str, object] = dict(values)
    for name, lowest in _NUMBERS.items():
        try:
            typed[name] = int(values[name])
        except ValueError:
            raise SettingsError(f"parameter {name} must be an integer, got {values[name]!r}") from None
        if typed[name] < lowest:
            raise SettingsError(f"parameter {name} must be at least {lowest}, got {typed[name]}")
    return ModelSettings(**typed)
