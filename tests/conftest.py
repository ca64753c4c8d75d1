"""Fixtures shared by more than one test area."""

import pytest

from tests.stack_fixtures import start_triton


@pytest.fixture(scope="session")
def triton(tmp_path_factory):
    """One real Triton on the CPU stand-ins for the generation and router tests.

    Tests that stop or kill Triton start their own instead.
    """
    process, _port = start_triton(tmp_path_factory.mktemp("triton-logs"))
    yield process
    process.stop()
