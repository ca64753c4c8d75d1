"""The protos lint clean (STANDARD + every element commented) and Envoy accepts its config."""

import subprocess

import pytest

from gateway.render import EnvoyParams, envoy_binary, render
from tests.harness import REPO

pytestmark = pytest.mark.integration


def test_buf_lint_is_clean():
    result = subprocess.run([str(REPO / "node_modules/.bin/buf"), "lint"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rendered_envoy_config_validates(tmp_path):
    config = tmp_path / "envoy.yaml"
    params = EnvoyParams(listen_port=18080, admin_port=19901)
    params.upstreams["router"] = ["127.0.0.1:50051", "127.0.0.1:50061"]
    config.write_text(render(params))
    result = subprocess.run([str(envoy_binary()), "--mode", "validate", "-c", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    text = config.read_text()
    assert "port_value: 50051" in text and "port_value: 50061" in text, "both router replicas are endpoints"
