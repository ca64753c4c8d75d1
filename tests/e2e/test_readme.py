"""The README's commands work as written."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.configdoc import reference
from tests.harness import REPO

README = (REPO / "README.md").read_text()


def _block(name: str) -> str:
    match = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", README, re.S)
    assert match, f"README has no {name} block"
    return match.group(1)


def grpcurl_examples() -> list[str]:
    return [line for line in _block("grpcurl-examples").splitlines() if "grpcurl" in line]


def test_readme_lists_grpcurl_for_every_service():
    examples = " ".join(grpcurl_examples())
    for service in ("inference", "generation", "guardrails", "retrieval"):
        assert f"describe llmsuite.{service}.v1." in examples


@pytest.mark.parametrize("command", grpcurl_examples())
def test_readme_grpcurl_example_runs_verbatim(edge, command):
    command = command.replace("127.0.0.1:8080", edge)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(command, shell=True, cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout
    if command.split()[2] == "list" or " list" in command:
        for service in ("inference", "generation", "guardrails", "retrieval"):
            assert f"llmsuite.{service}.v1." in output
    elif " describe " in command:
        assert "is a service" in output and "rpc " in output
    elif "Health/Check" in command:
        assert json.loads(output)["status"] == "SERVING"
    else:
        assert output.strip().startswith("{"), output


def test_readme_configuration_reference_matches_the_code():
    assert _block("config-reference").strip() == reference().strip(), \
        "regenerate the README block with: python -m services.common.configdoc"
