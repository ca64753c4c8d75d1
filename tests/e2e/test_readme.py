"""The README's commands work as written."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.keys import add_key
from tools.configdoc import reference
from tests.harness import REPO

README = (REPO / "README.md").read_text()


def _block(name: str) -> str:
    match = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", README, re.S)
    assert match, f"README has no {name} block"
    return match.group(1)


def grpcurl_examples() -> list[str]:
    return [line for line in _block("grpcurl-examples").splitlines() if "grpcurl" in line]


@pytest.fixture(scope="module")
def shell_env(stack):
    """The environment a reader has after following the README: keys exported."""
    admin_key = add_key(stack.var_dir / "gateway" / "keys.yaml", "e2e-admin", "default", ["admin"])
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "LLMSUITE_ADMIN_KEY": admin_key}


def operator_examples() -> list[str]:
    return [line for line in _block("operator-examples").splitlines() if line.startswith((".venv/", "curl "))]


def run_verbatim(command: str, stack, env) -> subprocess.CompletedProcess:
    command = (command.replace("127.0.0.1:8080", f"127.0.0.1:{stack.ports.envoy}")
               .replace("127.0.0.1:9101", f"127.0.0.1:{stack.ports.router_metrics}")
               .replace("var/gateway/", f"{stack.var_dir}/gateway/")
               .replace("var/audit/", f"{stack.var_dir}/audit/"))
    export = next(line for line in _block("grpcurl-examples").splitlines() if line.startswith("export "))
    export = export.replace("var/gateway/", f"{stack.var_dir}/gateway/")
    return subprocess.run(f"{export}\n{command}", shell=True, cwd=REPO, capture_output=True, text=True,
                          timeout=60, env=env)


def test_readme_lists_grpcurl_for_every_service():
    examples = " ".join(grpcurl_examples())
    calls = " ".join(grpcurl_examples() + operator_examples())
    for service in ("inference", "generation", "guardrails", "retrieval", "admin"):
        assert f"describe llmsuite.{service}.v1." in examples
        assert re.search(rf"llmsuite\.{service}\.v1\.\w+Service/\w+", calls), f"no call of {service}"


@pytest.mark.integration
@pytest.mark.parametrize("command", grpcurl_examples())
def test_readme_grpcurl_example_runs_verbatim(stack, shell_env, command):
    result = run_verbatim(command, stack, shell_env)
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout
    words = command.split()
    if "list" in words:
        for service in ("inference", "generation", "guardrails", "retrieval", "admin"):
            assert f"llmsuite.{service}.v1." in output
    elif "describe" in words:
        assert "is a service" in output and "rpc " in output
    elif "Health/Check" in command:
        assert json.loads(output)["status"] == "SERVING"
    elif "GenerateStream" in command:
        messages = [json.loads(chunk) for chunk in re.split(r"(?<=\})\n(?=\{)", output.strip())]
        assert "final" in messages[-1] and messages[-1]["final"]["text"]
    elif "CheckInput" in command:
        reply = json.loads(output)
        assert reply["verdict"] == "VERDICT_REDACT" and "jane.doe@example.com" not in reply["sanitized_text"]
    elif "ListModels" in command:
        assert {model["name"] for model in json.loads(output)["models"]} >= {"light", "full"}
    else:
        assert json.loads(output) is not None


def operations_script(stack) -> str:
    """The README's operator's-guide block, as a shell script for this stack."""
    script = _block("operations-examples").split("```sh\n", 1)[1].rsplit("```", 1)[0]
    return (script.replace("127.0.0.1:8080", f"127.0.0.1:{stack.ports.envoy}")
            .replace("var/gateway/", f"{stack.var_dir}/gateway/"))


@pytest.mark.integration
def test_readme_operations_guide_runs_verbatim(stack, shell_env):
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", operations_script(stack)], cwd=REPO,
                            capture_output=True, text=True, timeout=240, env=shell_env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    replies = [json.loads(chunk) for chunk in re.split(r"(?<=\})\n(?=\{)", result.stdout.strip())]
    resubmitted, job, answer, session, listed, deleted, rated, today, month = replies
    assert resubmitted["state"] in ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_COMPLETED")
    assert "created" not in resubmitted, "the same idempotency key returns the job made before"
    assert job["job"]["job_id"] == resubmitted["job_id"] and job["job"]["state"] == "JOB_STATE_COMPLETED"
    assert [r["index"] if "index" in r else 0 for r in job["job"]["results"]] == [0, 1]
    assert all(r["response"]["text"] for r in job["job"]["results"])
    assert [m["content"] for m in session["session"]["turns"]] == ["Plan a day in Lisbon", answer["text"]]
    assert "guide-trip" in [s["session_id"] for s in listed["sessions"]]
    assert deleted["cached_answers_deleted"] == 1
    assert rated == {"rating": 1}
    assert int(today["requests"]) >= 4 and today["tenant"] == "default" and today["window"] == "USAGE_WINDOW_DAY"
    assert int(month["requests"]) >= int(today["requests"]) and float(month["cost_usd"]) > 0


def test_readme_configuration_reference_matches_the_code():
    assert _block("config-reference").strip() == reference().strip(), \
        "regenerate the README block with: python -m tools.configdoc --readme"


def _operator_output(method: str, output: str) -> None:
    """What each line of the operator's guide shows, in the guide's order."""
    if method == "audit":
        assert output.startswith("ok: ") and "records" in output
        return
    if method == "metrics":
        assert 'llmsuite_router_variant_weight{alias="full",variant="full@2"} 10.0' in output
        return
    reply = json.loads(output)
    rollout = reply.get("rollout", {})
    expected = {
        "SetWeights": lambda: rollout["state"] == "ROLLOUT_STATE_CANARY" and rollout["baseline"] == "full@1",
        "Generate": lambda: reply["model_variant"] in ("full@1", "full@2") and reply["model"] == "full",
        "Rollback": lambda: rollout["state"] == "ROLLOUT_STATE_ROLLED_BACK"
        and rollout["last_rollback"]["reason"] == "ROLLBACK_REASON_MANUAL"
        and rollout["last_rollback"]["actor"] == "e2e-admin",
        "Promote": lambda: rollout["state"] == "ROLLOUT_STATE_PROMOTED" and rollout["baseline"] == "full@2",
        "GetRollout": lambda: rollout["alias"] == "full",
        "ListTemplates": lambda: any(t["name"] == "default" for t in reply["templates"]),
        "CreateTemplateVersion": lambda: reply["template"]["version"] == "2",
        "ActivateTemplate": lambda: reply["template"]["active_version"] == "2",
        "GetTemplate": lambda: reply["template"]["version"] == "2" and reply["active"],
        "RollbackTemplate": lambda: reply["template"]["active_version"] == "1",
    }
    assert expected[method](), output


def _operator_method(command: str) -> str:
    if "audit verify" in command:
        return "audit"
    if "/metrics" in command:
        return "metrics"
    return re.search(r"Service/(\w+)", command).group(1)


@pytest.mark.integration
def test_readme_operator_guide_runs_verbatim_in_order(stack, shell_env):
    commands = operator_examples()
    assert [_operator_method(c) for c in commands].count("SetWeights") == 2 and "audit verify" in commands[-1]
    try:
        for command in commands:
            result = run_verbatim(command, stack, shell_env)
            assert result.returncode == 0, command + "\n" + result.stdout + result.stderr
            _operator_output(_operator_method(command), result.stdout)
    finally:
        # The guide ends with full@2 promoted: give the shared stack its own full back.
        reset = ("-d '{\"alias\": \"full\", \"baseline\": \"full\", \"weights\": [{\"variant\": \"full\", "
                 "\"weight\": 100}]}'")
        restored = run_verbatim('.venv/bin/grpcurl -plaintext -H "authorization: Bearer $LLMSUITE_ADMIN_KEY" '
                                f'{reset} 127.0.0.1:8080 llmsuite.admin.v1.AdminService/SetWeights', stack, shell_env)
        assert restored.returncode == 0, restored.stderr
