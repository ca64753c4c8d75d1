"""The alert rules (compose/prometheus/alerts.yml) under Debian's promtool: they parse,
and their fixtures (alerts_test.yml) fire what must fire and nothing else."""

import subprocess
from pathlib import Path

import pytest
import yaml

from services.common.paths import REPO

pytestmark = pytest.mark.integration

RULES = REPO / "compose" / "prometheus" / "alerts.yml"
FIXTURES = Path(__file__).with_name("alerts_test.yml")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


def test_rules_are_valid():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_fixtures_fire_exactly_the_expected_alerts():
    result = promtool("test", "rules", str(FIXTURES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_fixture_that_fires_it():
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"]
              for rule in group["rules"] if "alert" in rule}
    fired = {case["alertname"] for test in yaml.safe_load(FIXTURES.read_text())["tests"]
             for case in test.get("alert_rule_test", ()) if case.get("exp_alerts")}
    assert alerts - fired == set()


def test_a_wrong_expectation_fails(tmp_path):
    """promtool's verdict is not a formality: a fixture that expects silence where the
    alert fires fails the run."""
    fixtures = yaml.safe_load(FIXTURES.read_text())
    fixtures["rule_files"] = [str(RULES)]
    for test in fixtures["tests"]:
        for case in test.get("alert_rule_test", ()):
            case["exp_alerts"] = []
    broken = tmp_path / "alerts_test.yml"
    broken.write_text(yaml.safe_dump(fixtures))
    result = promtool("test", "rules", str(broken))
    assert result.returncode != 0
    assert "CircuitBreakerOpen" in result.stdout + result.stderr
