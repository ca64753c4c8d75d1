"""Fixtures shared by more than one test area.

Tests that start a process (Triton, Envoy, Redis, a service, a command-line tool)
carry the `integration` marker; `make test-unit` runs the others, and there any
attempt to start a process fails the test that made it, so a missing marker shows.
"""

import os
import subprocess

import pytest

from tests.stack_fixtures import start_triton

UNIT_ONLY = os.environ.get("LLMSUITE_UNIT_TESTS") == "1"


@pytest.fixture(scope="session", autouse=UNIT_ONLY)
def _no_processes():
    def refuse(self, args, *rest, **kwargs):
        raise AssertionError(f"a unit test started a process ({args!r}): mark the test `integration`")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", refuse)
        yield


@pytest.fixture(scope="session")
def triton(tmp_path_factory):
    """One real Triton on the CPU stand-ins for the generation and router tests.

    Tests that stop or kill Triton start their own instead.
    """
    process, _port = start_triton(tmp_path_factory.mktemp("triton-logs"))
    yield process
    process.stop()
